"""A pony-build-shaped XML-RPC server that records what it receives, for paddock's tests.

usage: pony_server.py LOG   (prints "listening on HOST:PORT", then serves until killed)

Every `add_results` call is appended to LOG as one JSON line
{"call": "add_results", "client_info": ..., "results": ..., "extras": ...} and answered like
pony-build, with (result_key, auth_key). `POST /upload?auth_key=&filename=&description=&visible=`
(pony-build's file upload) is appended as {"call": "upload", "query": {...}, "size": N,
"body": "<latin-1 text>"} and answered 200 only for an auth_key this server handed out.
"""
import json
import sys
import threading
import urllib.parse
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

log_path = sys.argv[1]
lock = threading.Lock()
keys = {}


def record(entry):
    with lock:
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def add_results(client_info, results, extras=None):
    with lock:
        n = len(keys) + 1
        auth = "auth-%d" % n
        keys[auth] = str(n)
    record({"call": "add_results", "client_info": client_info, "results": results, "extras": extras})
    return (str(n), auth)


class Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/xmlrpc",)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/upload":
            return super().do_POST()
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            known = query.get("auth_key") in keys
        if known:
            record({"call": "upload", "query": query, "size": len(body), "body": body.decode("latin-1")})
        self.send_response(200 if known else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Handler, allow_none=True, logRequests=False)
server.register_function(add_results)
print("listening on %s:%d" % server.server_address, flush=True)
server.serve_forever()
