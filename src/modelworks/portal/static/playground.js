// Modelworks portal: the playground. Streams chat completions from /portal/api/chat/completions (the API's own
// handler, as the signed-in principal). Answers are rendered from Markdown by building DOM nodes: no HTML from a
// model or a user is ever parsed, so nothing in an answer can run.
"use strict";

(() => {
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const list = $("pg-messages");
  const input = $("pg-input");
  const sendButton = $("pg-send");
  const stopButton = $("pg-stop-button");
  const history = [];  // the conversation: {role, content}
  let running = null;  // the AbortController of the answer being streamed

  for (const [slider, shown] of [["pg-temperature", "pg-temperature-value"], ["pg-top-p", "pg-top-p-value"]]) {
    $(slider).addEventListener("input", () => { $(shown).textContent = $(slider).value; });
  }

  function settings() {
    const stop = $("pg-stop").value.split(",").map((s) => s.trim()).filter(Boolean).slice(0, 4);
    const body = {
      model: $("pg-deployment").value,
      temperature: Number($("pg-temperature").value),
      top_p: Number($("pg-top-p").value),
      max_tokens: Math.max(1, parseInt($("pg-max-tokens").value, 10) || 256),
    };
    if (stop.length) body.stop = stop;
    return body;
  }

  function messages() {
    const system = $("pg-system").value.trim();
    return (system ? [{ role: "system", content: system }] : []).concat(history);
  }

  // -- rendering ------------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function inline(parent, text) {
    // `code`, **bold**, *italic*, [label](https://...) and bare text, as nodes
    const pattern = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\((https?:\/\/[^\s)]+)\))/g;
    let last = 0;
    for (const m of text.matchAll(pattern)) {
      if (m.index > last) parent.append(text.slice(last, m.index));
      if (m[1]) parent.append(el("code", "", m[1].slice(1, -1)));
      else if (m[2]) parent.append(el("strong", "", m[2].slice(2, -2)));
      else if (m[3]) parent.append(el("em", "", m[3].slice(1, -1)));
      else if (m[4]) {
        const a = el("a", "", m[4].slice(1, m[4].indexOf("]")));
        a.href = m[5];
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        parent.append(a);
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function markdown(text) {
    const out = document.createDocumentFragment();
    const lines = text.split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (line.startsWith("```")) {
        const code = [];
        i += 1;
        while (i < lines.length && !lines[i].startsWith("```")) code.push(lines[i++]);
        i += 1;
        const pre = el("pre");
        pre.append(el("code", "", code.join("\n")));
        out.append(pre);
      } else if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const listNode = el(ordered ? "ol" : "ul");
        while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
          const item = el("li");
          inline(item, lines[i].replace(/^\s*([-*]|\d+\.)\s+/, ""));
          listNode.append(item);
          i += 1;
        }
        out.append(listNode);
      } else if (/^#{1,6}\s/.test(line)) {
        const heading = el("p");
        heading.append(el("strong", "", line.replace(/^#{1,6}\s+/, "")));
        out.append(heading);
        i += 1;
      } else if (line.trim() === "") {
        i += 1;
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() !== "" && !lines[i].startsWith("```")
               && !/^\s*([-*]|\d+\.)\s+/.test(lines[i])) para.push(lines[i++]);
        const p = el("p");
        inline(p, para.join("\n"));
        out.append(p);
      }
    }
    return out;
  }

  function bubble(role) {
    const item = el("li", role);
    item.append(el("div", "role", role));
    const content = el("div", "content");
    item.append(content);
    list.append(item);
    return item;
  }

  function annotate(item, results, where) {
    if (!results) return;
    const box = item.querySelector(".annotations") || item.appendChild(el("div", "annotations"));
    for (const [category, result] of Object.entries(results)) {
      if (!result || typeof result !== "object") continue;
      const hit = result.filtered || result.detected;
      const label = result.severity ? `${category}: ${result.severity}` : `${category}: ${hit ? "detected" : "none"}`;
      const badge = el("span", `badge ${hit ? "bad" : "ok"}`, `${where} ${label}${result.filtered ? " (filtered)" : ""}`);
      badge.dataset.category = category;
      box.append(badge);
    }
  }

  // -- sending --------------------------------------------------------------------------------------------

  async function send(text) {
    history.push({ role: "user", content: text });
    bubble("user").querySelector(".content").append(markdown(text));
    const item = bubble("assistant");
    const content = item.querySelector(".content");
    const stats = item.appendChild(el("div", "stats"));
    const body = { ...settings(), messages: messages(), stream: true, stream_options: { include_usage: true } };
    running = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    const started = performance.now();
    let first = null;
    let answer = "";
    let finish = null;
    let usage = null;
    let chunks = 0;
    try {
      const response = await fetch("/portal/api/chat/completions", {
        method: "POST", signal: running.signal, credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const error = (await response.json()).error || {};
        item.classList.add("error");
        content.append(el("p", "", error.message || `Error ${response.status}`));
        const inner = error.innererror && error.innererror.content_filter_result;
        annotate(item, inner, "prompt");
        finish = error.code || `http ${response.status}`;
        history.pop();
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of frame.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const event = JSON.parse(data);
            if (event.error) {
              item.classList.add("error");
              content.append(el("p", "", event.error.message));
              continue;
            }
            if (event.prompt_filter_results) {
              for (const r of event.prompt_filter_results) annotate(item, r.content_filter_results, "prompt");
            }
            if (event.usage) usage = event.usage;
            for (const choice of event.choices || []) {
              const piece = choice.delta && choice.delta.content;
              if (piece) {
                if (first === null) first = performance.now();
                chunks += 1;
                answer += piece;
                content.replaceChildren(markdown(answer));
                content.dataset.chunks = String(chunks);
              }
              if (choice.finish_reason) finish = choice.finish_reason;
              if (choice.content_filter_results) annotate(item, choice.content_filter_results, "answer");
            }
          }
        }
      }
    } catch (error) {
      if (error.name === "AbortError") finish = "stopped";
      else { item.classList.add("error"); content.append(el("p", "", String(error))); }
    } finally {
      running = null;
      sendButton.disabled = false;
      stopButton.disabled = true;
      if (answer) history.push({ role: "assistant", content: answer });
      const seconds = (performance.now() - started) / 1000;
      const out = usage ? usage.completion_tokens : chunks;
      const parts = [];
      if (usage) parts.push(`tokens in ${usage.prompt_tokens}`, `out ${usage.completion_tokens}`);
      if (first !== null) {
        parts.push(`first token ${Math.round(first - started)} ms`);
        const streaming = (performance.now() - first) / 1000;
        if (out > 1 && streaming > 0) parts.push(`${(out / streaming).toFixed(1)} tokens/s`);
      }
      parts.push(`finish: ${finish || "none"}`, `${seconds.toFixed(2)} s`);
      for (const part of parts) stats.append(el("span", "", part));
      stats.dataset.finish = finish || "";
    }
  }

  $("pg-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || running) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("pg-form").requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => { if (running) running.abort(); });
  $("pg-clear").addEventListener("click", () => { history.length = 0; list.replaceChildren(); });

  // -- view code ------------------------------------------------------------------------------------------

  $("pg-view-code").addEventListener("click", () => {
    const body = { ...settings(), messages: messages() };
    const json = JSON.stringify(body, null, 2);
    $("pg-code-curl").textContent = `curl ${root.dataset.openaiBase}/chat/completions \\\n`
      + '  -H "Authorization: Bearer $MODELWORKS_API_KEY" \\\n  -H "Content-Type: application/json" \\\n'
      + `  -d '${json.replace(/'/g, "'\\''")}'`;
    const py = JSON.stringify(body.messages, null, 4).replace(/\n/g, "\n    ");
    const extras = Object.entries(body).filter(([k]) => k !== "messages" && k !== "model")
      .map(([k, v]) => `    ${k}=${JSON.stringify(v)},`).join("\n");
    $("pg-code-python").textContent = "import os\n\nfrom openai import OpenAI\n\n"
      + `client = OpenAI(base_url="${root.dataset.openaiBase}", api_key=os.environ["MODELWORKS_API_KEY"])\n`
      + `answer = client.chat.completions.create(\n    model=${JSON.stringify(body.model)},\n    messages=${py},\n${extras}\n)\n`
      + "print(answer.choices[0].message.content)";
    $("pg-code").showModal();
  });
})();
