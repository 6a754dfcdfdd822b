"""A static file server on 127.0.0.1 (an ephemeral port) for the download tests: it
serves a folder, records the paths asked for, and can cut chosen files short (it
promises the full Content-Length, sends half, and closes the connection)."""
from __future__ import annotations

import functools
import http.server
import os
import threading


class LocalServer:
    def __init__(self, folder, truncate=()):
        handler = functools.partial(_Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.folder, self.httpd.truncate, self.httpd.requests = str(folder), set(truncate), []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url(folder) -> str:
    """The URL of a server that has already stopped (connection refused)."""
    with LocalServer(folder) as server:
        return server.url


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        name = self.path.lstrip("/")
        if name not in self.server.truncate:
            return super().do_GET()
        content = open(os.path.join(self.server.folder, name), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass
