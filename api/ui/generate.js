// A causal LM's box: a prompt sent to POST /v1/chat/completions (or /v1/completions without the chat template),
// answered by the live version, its text streamed in as server-sent events arrive. Shown only when the version this
// server answers with is a causal LM (GET /v1/models/current: kind).
import { token } from "./api.js";
import { h, replace } from "./dom.js";

const MAX_TOKENS = 64;

// POST with the pasted token; each `data:` event's JSON to onChunk until [DONE]
async function stream(path, body, onChunk) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify({ ...body, stream: true }) });
  if (!response.ok) {
    const detail = await response.json().catch(() => ({}));
    throw new Error(`${response.status}: ${typeof detail.detail === "string" ? detail.detail : response.statusText}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    const events = buffered.split("\n\n");
    buffered = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") return;
      if (data) onChunk(JSON.parse(data));
    }
  }
}

export function renderGenerate(current) {
  const section = document.getElementById("generate");
  const link = document.getElementById("generate-link");
  const causal = current && current.kind === "causal";
  section.hidden = !causal;
  link.hidden = !causal;
  if (!causal) return;
  const prompt = h("textarea", { id: "generate-prompt", rows: 3, cols: 60 });
  const chat = h("input", { id: "generate-chat", type: "checkbox", checked: true });
  const out = h("pre", { id: "generate-out", class: "generated", "aria-live": "polite" });
  const note = h("p", { id: "generate-note", class: "muted" });
  const run = async (event) => {
    event.preventDefault();
    if (!prompt.value.trim()) {
      replace(note, h("span", { class: "error" }, "Write a prompt first."));
      return;
    }
    out.textContent = "";
    replace(note, "generating…");
    const asChat = chat.checked;
    const asked = { max_tokens: MAX_TOKENS, temperature: 0 }; // greedy: the same prompt, the same text
    const body = asChat ? { messages: [{ role: "user", content: prompt.value }], ...asked }
      : { prompt: prompt.value, ...asked };
    let version = "", finish = "";
    try {
      await stream(asChat ? "/v1/chat/completions" : "/v1/completions", body, (chunk) => {
        version = chunk.version || version;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        out.textContent += asChat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        finish = choice.finish_reason || finish;
      });
      replace(note, `answered by ${version}` + (finish ? ` · finish: ${finish}` : ""));
    } catch (err) {
      replace(note, h("span", { class: "error" }, err.message));
    }
  };
  replace("generate-body", h("form", { class: "predict", onsubmit: run },
    h("p", {}, `${current.serving} is a causal LM: it generates text (greedy, at most ${MAX_TOKENS} new tokens here; ` +
      "the API takes temperature, top_p, stop and seed)."),
    h("label", { for: "generate-prompt" }, "Prompt"), h("br"), prompt, h("br"),
    chat, " ", h("label", { for: "generate-chat" }, "as a chat message (the tokenizer's chat template)"), h("br"),
    h("button", { type: "submit" }, "Generate"), out, note));
}
