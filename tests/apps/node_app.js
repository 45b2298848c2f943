// A Node.js test app for the relay: honours $PORT, listens on 127.0.0.1.
//   /           "Hello from node <pid>" with a Content-Length
//   /stream?n=K K pieces "piece-i\n" written one by one (Node frames them chunked)
//   /echo       JSON: method, url, headers (raw pairs), body length
"use strict";
const http = require("http");

const port = parseInt(process.env.PORT, 10);
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const url = new URL(req.url, "http://localhost");
    res.setHeader("X-Pid", String(process.pid));
    if (url.pathname === "/stream") {
      const n = parseInt(url.searchParams.get("n") || "3", 10);
      res.writeHead(200, { "Content-Type": "text/plain" });
      for (let i = 0; i < n; i++) res.write(`piece-${i}\n`);
      res.end();
      return;
    }
    if (url.pathname === "/echo") {
      const headers = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
      const body = Buffer.from(JSON.stringify({
        method: req.method, url: req.url, headers, body_length: Buffer.concat(chunks).length,
      }));
      res.writeHead(200, { "Content-Type": "application/json", "Content-Length": body.length });
      res.end(body);
      return;
    }
    const body = Buffer.from(`Hello from node ${process.pid}\n`);
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": body.length });
    res.end(body);
  });
});
server.listen(port, "127.0.0.1", () => {
  console.log(`node app ${process.pid} listening on ${port}`);
});
