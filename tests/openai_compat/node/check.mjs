// The official `openai` npm package against agentctl: chat completions (whole and streamed), the Responses API
// chained by previous_response_id, and a typed error. Prints one JSON object for the Python test to check.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.AGENTCTL_V1, apiKey: process.env.AGENTCTL_KEY, maxRetries: 0 });
const model = process.env.AGENTCTL_MODEL;
const result = {};

const models = await client.models.list();
result.models = models.data.map((entry) => entry.id);

const whole = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hello from node" }] });
result.whole = { content: whole.choices[0].message.content, finish: whole.choices[0].finish_reason, usage: whole.usage };

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "streaming from node" }],
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
result.streamed = { content: streamed, usage };

const first = await client.responses.create({ model, input: "node remembers this" });
const second = await client.responses.create({ model, input: "node asks again", previous_response_id: first.id });
const fetched = await client.responses.retrieve(second.id);
result.responses = {
  first: first.output_text,
  second: second.output_text,
  previous: fetched.previous_response_id,
  firstId: first.id,
  status: fetched.status,
};

const events = [];
const responseStream = await client.responses.create({ model, input: "node streams a response", stream: true });
for await (const event of responseStream) events.push(event.type);
result.responseEvents = events;

try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  result.error = null;
} catch (error) {
  result.error = { name: error.constructor.name, status: error.status, code: error.code, type: error.type };
}
console.log(JSON.stringify(result));
