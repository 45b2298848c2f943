// A tiny Node.js app for passenger: Node's http module only, listens on 127.0.0.1:$PORT.
"use strict";
const http = require("http");

const port = Number(process.env.PORT);
if (!port) {
  console.error("PORT is not set: start me with passenger (or PORT=3000 node server.js)");
  process.exit(1);
}

const server = http.createServer((req, res) => {
  const body = `Hello from Node.js process ${process.pid} (${process.env.NODE_ENV})\n`;
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
});

// Only the loopback address: passenger is the one that faces clients.
server.listen(port, "127.0.0.1");

// passenger stops a process with SIGTERM (after closing its stdin): finish what is in flight, then exit.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
