// Sends one prompt three times with opencode's official SDK and the same
// Idempotency-Key, as a client retrying after timeouts would, and prints the
// statuses and replay headers it saw as JSON for the Go test to judge.
//
//   node sdk-idempotency.mjs <base url> <session id> <key>
import { createOpencodeClient } from "@opencode-ai/sdk";

const [baseUrl, sessionID, key] = process.argv.slice(2);
const client = createOpencodeClient({ baseUrl });
const out = { statuses: [], replayed: [] };
for (let i = 0; i < 3; i++) {
  const res = await client.session.promptAsync({
    path: { id: sessionID },
    body: { parts: [{ type: "text", text: "hello from the SDK" }] },
    headers: { "Idempotency-Key": key },
  });
  out.statuses.push(res.response.status);
  out.replayed.push(res.response.headers.get("idempotent-replayed") ?? "");
}
console.log(JSON.stringify(out));
