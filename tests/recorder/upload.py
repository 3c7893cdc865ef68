"""pony-build's file upload, as its client library does it: add_results over XML-RPC, then
POST {server}/upload?description=&filename=&auth_key=&visible= with the file's bytes (urllib,
so the body goes form-encoded, as pony-build's client sent it).

usage: upload.py BASE_URL TOKEN   (prints the result key; exits non-zero on a wrong answer)
"""
import sys
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client

base, token = sys.argv[1], sys.argv[2]
rpc = xmlrpc.client.ServerProxy(f"{base}/xmlrpc/{token}", allow_none=True)
ci = {"package": "eggs", "arch": "x86_64", "host": "builder1", "tags": ["py3"], "success": True}
steps = [{"type": "file_upload", "description": "an egg installation file", "filesize": 9, "errout": "", "status": 0}]
(result_key, auth_key) = rpc.add_results(ci, steps)


def upload(data, filename, auth=auth_key, visible="yes"):
    qs = urllib.parse.urlencode(dict(description="an egg installation file", filename=filename,
                                     auth_key=str(auth), visible=visible))
    try:
        return urllib.request.urlopen(f"{base}/upload?{qs}", data).status
    except urllib.error.HTTPError as e:
        return e.code


assert upload(b"egg\x00bytes", "eggs-1.0-py3.egg") == 200
assert upload(b"egg\x00bytes", "eggs-1.0-py3.egg") == 200, "a repeated upload is harmless"
assert upload(b"other", "eggs-1.0-py3.egg") == 409, "another file of the same name"
assert upload(b"x", "notes.txt", visible="no") == 200
assert upload(b"x", "stolen.txt", auth="not-the-key") == 401
assert upload(b"x", "../../etc/passwd") == 400
print(result_key)
