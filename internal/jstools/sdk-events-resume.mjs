// Watches a session's events with opencode's official SDK until the session is
// idle. The SDK reconnects by itself when its connection breaks, sending the
// last event id it saw as Last-Event-ID. Prints the events it yielded, and how
// many times its connection failed, as JSON for the Go test to judge.
//
//   node sdk-events-resume.mjs <base url> <session id>
import { createOpencodeClient } from "@opencode-ai/sdk";

const [baseUrl, sessionID] = process.argv.slice(2);
const client = createOpencodeClient({ baseUrl });
const out = { events: [], errors: 0 };

const events = await client.event.subscribe({
  sseDefaultRetryDelay: 200,
  onSseError: () => { out.errors++; },
});
for await (const event of events.stream) {
  out.events.push(event);
  if (event.type === "server.connected" && out.events.length === 1) console.error("subscribed");
  if (event.type === "session.idle" && event.properties.sessionID === sessionID) break;
}
console.log(JSON.stringify(out));
process.exit(0);
