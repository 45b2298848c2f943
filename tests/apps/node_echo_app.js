// echo_app.py's endpoints in Node.js (honours $PORT, listens on 127.0.0.1), for tests that run the same
// clients against apps of both languages.  Node frames a response of unknown length as chunks, closes idle
// keep-alive connections after 5 s, and hands "Upgrade" requests to the server's "upgrade" event.
//   /echo            JSON: method, path, headers (raw pairs), body_length, body_sha256
//   /sleep?ms=N      "slept" after N ms
//   /status?code=N   an empty answer with that status
//   /chunked?n=K     K chunks "chunk-i\n" (&then=cut: close without the last chunk; &then=bad: an invalid
//                    chunk, then close, with &gate=KEY once /release?gate=KEY came; &then=hang: wait &ms=N)
//   /release?gate=K  lets the response waiting on that gate go on
//   /close           a body framed by closing the connection
//   /bytes?n=N       N bytes of "x" with Content-Length, in 64 KiB writes
//   /lines?n=K       K numbered 16-byte lines (&cut=C: the length says K, the app closes after C)
//   /upgrade         with "Upgrade: echo": 101, "welcome\n", then every byte sent back
//   /exit            the process exits without answering
//   anything else    "Hello from <pid>"
"use strict";
const crypto = require("crypto");
const http = require("http");

const port = parseInt(process.env.PORT, 10);
const PIECE = Buffer.alloc(65536, "x");
const gates = new Map();  // KEY -> {promise, open}: /release?gate=KEY opens it

function gate(key) {
  if (!gates.has(key)) {
    let open;
    const promise = new Promise((resolve) => { open = resolve; });
    gates.set(key, { promise, open });
  }
  return gates.get(key);
}

function lines(from, to) {
  let text = "";
  for (let i = from; i < to; i++) text += i.toString(16).padStart(15, "0") + "\n";
  return text;
}

function writeAll(res, total, piece, done) {
  // Writes `total` bytes of `piece` (cut to fit), waiting for the socket when Node's buffer is full.
  while (total > 0) {
    const chunk = total >= piece.length ? piece : piece.subarray(0, total);
    total -= chunk.length;
    if (!res.write(chunk)) {
      res.once("drain", () => writeAll(res, total, piece, done));
      return;
    }
  }
  done();
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const url = new URL(req.url, "http://localhost");
    const q = url.searchParams;
    const body = Buffer.concat(chunks);
    res.setHeader("X-Pid", String(process.pid));
    switch (url.pathname) {
      case "/echo": {
        const headers = [];
        for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
        const info = Buffer.from(JSON.stringify({
          method: req.method, path: req.url, version: req.httpVersion, headers,
          body_length: body.length, body_sha256: crypto.createHash("sha256").update(body).digest("hex"),
        }));
        res.writeHead(200, { "Content-Type": "application/json", "Content-Length": info.length });
        res.end(info);
        return;
      }
      case "/sleep":
        setTimeout(() => {
          res.writeHead(200, { "Content-Length": 5 });
          res.end("slept");
        }, parseFloat(q.get("ms") || "0"));
        return;
      case "/status": {
        const code = parseInt(q.get("code") || "200", 10);
        res.writeHead(code, code === 204 || code === 304 ? {} : { "Content-Length": 0 });
        res.end();
        return;
      }
      case "/chunked": {
        res.writeHead(200, { "Content-Type": "text/plain" });  // no length: Node sends chunks
        const n = parseInt(q.get("n") || "3", 10);
        for (let i = 0; i < n; i++) res.write(`chunk-${i}\n`);
        const then = q.get("then");
        if (then === "hang") {
          setTimeout(() => res.end(), parseFloat(q.get("ms") || "30000"));
        } else if (then === "cut") {
          res.socket.end();
        } else if (then === "bad") {
          const bad = () => res.socket.end("zz\r\nnot a chunk\r\n");
          if (q.has("gate")) gate(q.get("gate")).promise.then(bad);  // once the test has read the good chunks
          else bad();
        } else {
          res.end();
        }
        return;
      }
      case "/close":
        res.socket.end("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
        return;
      case "/bytes": {
        const n = parseInt(q.get("n") || "0", 10);
        res.writeHead(200, { "Content-Length": n });
        writeAll(res, n, PIECE, () => res.end());
        return;
      }
      case "/lines": {
        const n = parseInt(q.get("n") || "0", 10);
        const cut = Math.min(parseInt(q.get("cut") || String(n), 10), n);
        res.writeHead(200, { "Content-Length": 16 * n });
        res.write(lines(0, cut));
        if (cut < n) res.socket.end();
        else res.end();
        return;
      }
      case "/release":
        gate(q.get("gate") || "").open();
        res.writeHead(200, { "Content-Length": 8 });
        res.end("released");
        return;
      case "/exit":
        process.stderr.write("exiting on request\n", () => process.exit(3));
        return;
      default: {
        const hello = Buffer.from(`Hello from ${process.pid}`);
        res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": hello.length });
        res.end(hello);
      }
    }
  });
});

server.on("upgrade", (req, socket, head) => {
  socket.on("error", () => socket.destroy());  // a tunnel the client reset: only this connection ends
  if (new URL(req.url, "http://localhost").pathname !== "/upgrade" || (req.headers.upgrade || "").toLowerCase() !== "echo") {
    socket.end("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nwelcome\n");
  if (head.length) socket.write(head);
  socket.pipe(socket);
});

server.listen(port, "127.0.0.1", () => {
  console.log(`node echo app ${process.pid} listening on ${port}`);
});
