// The chat page: streamed replies over /v1/chat/completions, stop, an image or a recorded clip attached,
// and live numbers from /metrics. No dependencies, so it works offline.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let pending = [];          // parts waiting for the next message (image_url / input_audio)
let controller = null;     // the reply in flight
let recorder = null;

const keyInput = $("key");
keyInput.value = sessionStorage.getItem("edge-runtime-key") || "";
keyInput.addEventListener("change", () => { sessionStorage.setItem("edge-runtime-key", keyInput.value); refresh(); });
const headers = () => {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h.Authorization = "Bearer " + keyInput.value;
  return h;
};

function show(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

let needsKey = false;      // /metrics answered 401: wait for a key before asking again

async function refresh() {
  needsKey = false;
  try {
    const r = await fetch("/health");  // never needs the key
    $("model").textContent = (await r.json()).model;
  } catch (e) { $("model").textContent = "server unreachable"; }
  metrics();
}

async function send(text) {
  const content = pending.length ? [...pending, { type: "text", text }] : text;
  const label = text + (pending.length ? " [" + pending.map((p) => p.type === "image_url" ? "image" : "audio").join(", ") + "]" : "");
  pending = [];
  $("attached").textContent = "";
  history.push({ role: "user", content });
  show("user", label);
  const out = show("assistant", "");
  controller = new AbortController();
  $("stop").disabled = false;
  $("send").disabled = true;
  let reply = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ messages: history, stream: true }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (delta) { reply += delta; out.textContent = reply; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") { out.textContent = reply + " [stopped]"; }
    else { out.className = "msg error"; out.textContent = "error: " + e.message; history.pop(); reply = null; }
  } finally {
    controller = null;
    $("stop").disabled = true;
    $("send").disabled = false;
  }
  if (reply !== null) history.push({ role: "assistant", content: reply });
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    pending.push({ type: "image_url", image_url: { url: reader.result } });
    $("attached").textContent = "image: " + file.name;
  };
  reader.readAsDataURL(file);
});

// Recording: raw samples through Web Audio, sent as a 16-bit WAV (what input_audio takes).
function wav(samples, rate) {
  const data = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (o, s) => { for (let i = 0; i < s.length; i++) data.setUint8(o + i, s.charCodeAt(i)); };
  text(0, "RIFF"); data.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE"); text(12, "fmt ");
  data.setUint32(16, 16, true); data.setUint16(20, 1, true); data.setUint16(22, 1, true);
  data.setUint32(24, rate, true); data.setUint32(28, rate * 2, true); data.setUint16(32, 2, true);
  data.setUint16(34, 16, true); text(36, "data"); data.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => data.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 32767, true));
  let bin = "";
  new Uint8Array(data.buffer).forEach((b) => { bin += String.fromCharCode(b); });
  return btoa(bin);
}

if (!navigator.mediaDevices || !window.AudioContext) {
  $("record").disabled = true;
  $("record").title = "this browser does not allow recording here (it needs https or localhost)";
}
$("record").addEventListener("click", async () => {
  if (recorder) {
    const { ctx, stream, chunks } = recorder;
    recorder = null;
    stream.getTracks().forEach((t) => t.stop());
    const rate = ctx.sampleRate;
    await ctx.close();
    const samples = chunks.reduce((all, c) => { all.push(...c); return all; }, []);
    pending.push({ type: "input_audio", input_audio: { data: wav(samples, rate), format: "wav" } });
    $("attached").textContent = "clip: " + (samples.length / rate).toFixed(1) + " s";
    $("record").textContent = "Record";
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const ctx = new AudioContext();
    const node = ctx.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    node.onaudioprocess = (e) => chunks.push(Array.from(e.inputBuffer.getChannelData(0)));
    ctx.createMediaStreamSource(stream).connect(node);
    node.connect(ctx.destination);
    recorder = { ctx, stream, chunks };
    $("record").textContent = "Stop recording";
  } catch (e) { $("status").textContent = "microphone: " + e.message; }
});

// Live metrics from the Prometheus text at /metrics.
async function metrics() {
  if (needsKey) return;
  try {
    const r = await fetch("/metrics", { headers: headers() });
    if (r.status === 401) { needsKey = true; $("status").textContent = "enter the server's API key above"; return; }
    if (!r.ok) { $("status").textContent = "metrics: " + r.status; return; }
    const values = {};
    for (const line of (await r.text()).split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = line.match(/^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$/);
      if (m && !m[2]) values[m[1]] = Number(m[3]);
      if (m && m[1] === "edge_runtime_requests_total") values.requests = (values.requests || 0) + Number(m[3]);
    }
    const p = "edge_runtime_";
    const mean = (name) => values[p + name + "_count"] ? values[p + name + "_sum"] / values[p + name + "_count"] : 0;
    const rows = [
      ["requests", values.requests || 0],
      ["mean time to first token", (mean("time_to_first_token_seconds") * 1000).toFixed(0) + " ms"],
      ["mean tokens/s", mean("generation_tokens_per_second").toFixed(1)],
      ["generated tokens", values[p + "generated_tokens_total"] || 0],
      ["waiting", values[p + "queue_depth"] || 0],
      ["running", values[p + "busy_slots"] || 0],
      ["KV cells", (values[p + "kv_cells_used"] || 0) + " / " + (values[p + "kv_cells_total"] || 0)],
      ["memory", ((values[p + "process_resident_memory_bytes"] || 0) / 1048576).toFixed(0) + " MB"],
    ];
    const dl = $("metrics");
    dl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      return [dt, dd];
    }));
    $("status").textContent = "";
  } catch (e) { $("status").textContent = "metrics: " + e.message; }
}

refresh();
setInterval(metrics, 2000);
