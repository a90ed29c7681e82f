// Reads {body, headers, secret} as JSON on stdin; prints the verified body, or exits 1 with the error.
// `verified` is docs/webhooks.md's own example, written next to this file by the test as verifier.mjs.
import { verified } from "./verifier.mjs";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { body, headers, secret } = JSON.parse(input);
try {
  process.stdout.write(JSON.stringify(verified(body, headers, secret)));
} catch (error) {
  process.stderr.write(String(error));
  process.exit(1);
}
