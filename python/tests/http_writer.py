"""A writer process for the seed example: an HTTP side channel. POST /write
with an RdmaMetadata in its JSON form and a JSON {"size": n}... the body is
{"metadata": <RdmaMetadata JSON form>, "size": n}: the process fills a torch
tensor of n bytes with the pattern, writes it into the remote writable and
answers 200 once its write completed (500 with the error otherwise). Prints
its port on the first line of stdout; exits on POST /quit."""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

import ferry

from conftest import pattern

connector = ferry.Connector("http-writer")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"] or 0))
        if self.path == "/quit":
            self._answer(200, b"bye")
            self.server.quit = True
            return
        try:
            req = json.loads(body)
            md = ferry.RdmaMetadata.from_json(req["metadata"])
            tensor = torch.from_numpy(pattern(req["size"]).copy())
            with connector.begin_write(ferry.Descriptor(tensor), md) as op:
                op.wait(60)
            self._answer(200, b"written")
        except ferry.FerryError as e:
            self._answer(500, str(e).encode())

    def _answer(self, code, text):
        self.send_response(code)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args):
        pass


def main():
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.quit = False
    print(server.server_address[1], flush=True)
    while not server.quit:
        server.handle_request()
    return 0


if __name__ == "__main__":
    sys.exit(main())
