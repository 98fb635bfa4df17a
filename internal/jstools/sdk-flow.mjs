// Drives a session_ids proxy with opencode's official SDK, the way an
// orchestrator would: create sessions under chosen ids with the v1 and v2
// clients, prompt one, read its messages and watch its events, then fork it
// under chosen ids with both clients. Prints what it
// saw as JSON for the Go test to judge.
//
//   node sdk-flow.mjs <base url> <v1 id> <v2 id>
import { createOpencodeClient } from "@opencode-ai/sdk";
import { createOpencodeClient as createV2Client } from "@opencode-ai/sdk/v2";

const [baseUrl, v1ID, v2ID] = process.argv.slice(2);
const v1 = createOpencodeClient({ baseUrl });
const v2 = createV2Client({ baseUrl });
const out = { events: [] };

const events = await v1.event.subscribe();
const idle = (async () => {
  for await (const event of events.stream) {
    out.events.push(event);
    if (event.type === "session.idle" && event.properties.sessionID === v1ID) return;
  }
})();

// The v1 SDK's types have no id on create, but the body goes out as given.
const created = await v1.session.create({ body: { id: v1ID, title: "sdk v1" } });
out.v1Create = { status: created.response.status, id: created.data?.id, title: created.data?.title };
const replay = await v1.session.create({ body: { id: v1ID, title: "sdk v1" } });
out.v1Replay = { status: replay.response.status, replayed: replay.response.headers.get("idempotent-replayed") };

const createdV2 = await v2.v2.session.create({ id: v2ID, agent: "build" });
out.v2Create = { status: createdV2.response.status, id: createdV2.data?.data?.id };
const gotV2 = await v2.session.get({ sessionID: v2ID });
out.v2Get = { status: gotV2.response.status, id: gotV2.data?.id };

const prompt = await v1.session.promptAsync({ path: { id: v1ID }, body: { parts: [{ type: "text", text: "hello" }] } });
out.prompt = prompt.response.status;
await Promise.race([idle, new Promise((resolve) => setTimeout(resolve, 90_000))]);

const messages = await v1.session.messages({ path: { id: v1ID } });
out.messages = (messages.data ?? []).map((m) => ({
  sessionID: m.info.sessionID,
  role: m.info.role,
  text: m.parts.filter((p) => p.type === "text").map((p) => p.text).join(""),
}));

// Forks under chosen ids: the v1 body goes out as given; the v2 client
// puts a "$body_" parameter in the body.
const forkV1 = await v1.session.fork({ path: { id: v1ID }, body: { id: v1ID + "_fork" } });
out.v1Fork = { status: forkV1.response.status, id: forkV1.data?.id, title: forkV1.data?.title };
const forkV1Again = await v1.session.fork({ path: { id: v1ID }, body: { id: v1ID + "_fork" } });
out.v1ForkReplay = { status: forkV1Again.response.status, replayed: forkV1Again.response.headers.get("idempotent-replayed") };
const forkV2 = await v2.session.fork({ sessionID: v1ID, $body_id: v2ID + "_fork" });
out.v2Fork = { status: forkV2.response.status, id: forkV2.data?.id };
const forkMessages = await v1.session.messages({ path: { id: v1ID + "_fork" } });
out.forkMessages = (forkMessages.data ?? []).map((m) => ({ sessionID: m.info.sessionID, role: m.info.role }));
console.log(JSON.stringify(out));
process.exit(0);
