// Reads a solc standard-JSON input on stdin and writes {"solcVersion", "output"} to stdout.
// The compiler is the solc-js pinned in package.json; sources must be inline (no import callback).
"use strict";
const solc = require("solc");

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const input = Buffer.concat(chunks).toString("utf8");
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({ solcVersion: solc.version(), output: output }));
});
