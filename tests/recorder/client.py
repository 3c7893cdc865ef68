"""Exercise the recorder's pony-build XML-RPC API with the standard library client.

usage: client.py BASE_URL TOKEN   (exits non-zero on the first wrong answer)
"""
import sys
import xmlrpc.client

base, token = sys.argv[1], sys.argv[2]
rpc = xmlrpc.client.ServerProxy(f"{base}/xmlrpc/{token}", allow_none=True)
anon = xmlrpc.client.ServerProxy(f"{base}/xmlrpc", allow_none=True)

ci = {"package": "pony", "arch": "x86_64", "host": "builder1", "tags": ["py3", "debug"]}
expected_tagset = sorted(["py3", "debug", "__package=pony", "__arch=x86_64", "__host=builder1"])


def expect_fault(call, code=None, text=None):
    try:
        call()
    except xmlrpc.client.Fault as f:
        assert code is None or f.faultCode == code, (f.faultCode, f.faultString)
        assert text is None or text in f.faultString, f.faultString
        return f
    raise AssertionError("expected a fault")


def steps(ok):
    return [
        {"name": "checkout", "type": "setup", "command": "git clone x", "status": 0,
         "output": "cloned\n", "errout": "", "duration": 0.5},
        {"name": "compile", "type": "build", "command": ["make", "-j2"], "status": 0,
         "output": "cc -o x x.c\n" * 50, "errout": "", "duration": 3.25},
        {"name": "tests", "type": "test", "command": "make check", "status": 0 if ok else 1,
         "output": "ran 12 tests\n", "errout": "" if ok else "FAIL: test_pony\n", "duration": 2.0,
         "tests_run": 12},
    ][: 3 if not ok else 2]


# Nothing recorded yet.
assert rpc.get_tagsets_for_package("pony") == []
assert rpc.get_last_result_for_tagset("pony", expected_tagset) == 0

# No result -> build, and reserve it (default allowance); a second check sees the reservation.
flag, reason = rpc.check_should_build(ci, True, 0)
assert flag is True and "no build recorded" in reason, reason
flag, reason = rpc.check_should_build(ci, True, 0)
assert flag is False and "may be in build now" in reason, reason

# A failing build arrives; extra keys ride along.
info = dict(ci, success=False, duration=5.75, svn_rev="r100", env={"CC": "gcc"})
key, auth_key = rpc.add_results(info, steps(ok=False))
assert isinstance(key, str) and key.isdigit(), key
assert isinstance(auth_key, str) and len(auth_key) == 32, auth_key

receipt, got_info, got_steps = rpc.get_results(key)
assert receipt["result_key"] == key, receipt
assert receipt["client_ip"] == "127.0.0.1", receipt
assert receipt["submitter"] == "ci", receipt
assert isinstance(receipt["time"], float)
assert got_info["svn_rev"] == "r100" and got_info["env"] == {"CC": "gcc"}, got_info
assert got_info["success"] is False and got_info["duration"] == 5.75, got_info
assert [s["name"] for s in got_steps] == ["checkout", "compile", "tests"], got_steps
assert got_steps[1]["command"] == "make -j2", got_steps[1]
assert got_steps[2]["status"] == 1 and got_steps[2]["errout"] == "FAIL: test_pony\n"
assert got_steps[2]["tests_run"] == 12, got_steps[2]
# Keys may be passed as int too, as pony-build's own int keys were.
assert rpc.get_results(int(key))[0]["result_key"] == key

# After a failure: build again (the result also ended the earlier reservation).
flag, reason = rpc.check_should_build(ci, False, 0)
assert flag is True and "unsuccessful" in reason, reason
# Reserve for 600 s; during the reservation the answer is no.
flag, reason = rpc.check_should_build(ci, True, 600)
assert flag is True, reason
flag, reason = rpc.check_should_build(ci, False, 0)
assert flag is False and "may be in build now" in reason, reason

# The build succeeds.
key2, _ = rpc.add_results(dict(ci, success=True, duration=4.0), steps(ok=True))
assert int(key2) > int(key)

# Tagset round trip: the tagset we are given finds the latest result, in any order.
tagsets = rpc.get_tagsets_for_package("pony")
assert tagsets == [expected_tagset], tagsets
receipt, got_info, got_steps = rpc.get_last_result_for_tagset("pony", list(reversed(tagsets[0])))
assert receipt["result_key"] == key2 and got_info["success"] is True and len(got_steps) == 2
assert rpc.get_last_result_for_tagset("pony", ["__package=pony"]) == 0

flag, reason = rpc.check_should_build(ci, False, 0)
assert flag is False and reason == "build up to date", reason
# Another platform of the same package has no result yet.
flag, reason = rpc.check_should_build(dict(ci, host="builder2"), False, 0)
assert flag is True, reason

# Faults: wrong types, unknown keys and methods, missing token.
expect_fault(lambda: rpc.add_results({"package": 1, "arch": "a", "host": "h", "success": True}, []),
             code=-32602, text="client_info.package: expected string, got number")
expect_fault(lambda: rpc.add_results(dict(ci, success="yes"), []), text="client_info.success")
expect_fault(lambda: rpc.add_results(dict(ci, success=True), [{"status": "0"}]), text="results[0].status")
expect_fault(lambda: rpc.get_results("999999"), text="no result")
expect_fault(lambda: rpc.no_such_method(), code=-32601)
expect_fault(lambda: anon.add_results(dict(ci, success=True), []), code=401)
expect_fault(lambda: anon.check_should_build(ci, True, 0), code=401)
# Reads without a token are fine.
assert anon.get_tagsets_for_package("pony") == [expected_tagset]
assert anon.check_should_build(ci, False, 0)[0] is False

print("all XML-RPC checks passed")
