// The chat page: a conversation with the llm worker over the hub, no build step.
//
// A conversation is a channel (in the address: /chat?c=<channel>). The page follows it
// through hub.js from the start of its history, so a reload (or a second tab) gets the
// transcript and the answer so far exactly once, then the answer live; the tabs of a
// browser that show one conversation share one stream. Asking publishes to
// llm.requests with reply_to = the channel; Stop publishes a "stop" event to the
// channel. Model output is rendered as Markdown (marked) and sanitised (DOMPurify);
// raw HTML in it is shown as text.
import { subscribe } from "./hub.js";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var TOKEN_KEY = "hub-demo-token"; // shared with the demo page, kept in this tab only

  // -- the conversation's stream: the one place that speaks SSE ------------------------

  var EVENT_TYPES = ["question", "sentence", "delta", "restart", "stop", "done", "error"];

  // Follow one conversation channel; onEvent(type, data, id) for each event, onState
  // for the stream. Returns {close}. From "earliest", not from the cursor hub.js saves
  // per tab: the transcript lives only in this page's memory, so a reloaded page must
  // read the whole retained history again. hub.js then resumes from the last event it
  // read and drops ids it has seen, across reconnects and hand-overs between tabs:
  // nothing arrives twice.
  function followConversation(channel, onEvent, onState) {
    return subscribe([channel], {
      onEvent: function (e) {
        if (EVENT_TYPES.indexOf(e.type) >= 0) onEvent(e.type, e.data, e.id);
      },
      // The hub could not resume from the cursor (Redis lost events): what is shown
      // stays, the stream goes on live, and the badge says that something may be missing.
      onReset: function (reason, channels, info) {
        onState("reset", info.message || reason);
      },
      onState: function (state, info) { onState(state, info.error); },
    }, {
      lastEventId: "earliest",
      // Called before each stream opens and after a 401: a changed token is picked up.
      getToken: function () { return token() || null; },
    });
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function publish(channel, data, event) {
    var headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    var body = { channel: channel, data: data };
    if (event) body.event = event;
    return fetch("publish", { method: "POST", headers: headers, body: JSON.stringify(body) })
      .then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok) throw new Error(answer.message || response.statusText);
          return answer.id;
        });
      });
  }

  // -- the conversation: events folded into turns (as workers/llm/conversation.py) -----

  // What the page saw, for the console and for tests.
  var chat = { channel: null, turns: {}, order: [], open: [], events: [], state: "" };
  window.hubChat = chat;
  var stream = null;

  function reset(channel) {
    if (stream) stream.close();
    chat.channel = channel;
    chat.turns = {};
    chat.order = [];
    chat.open = [];
    chat.events = [];
    $("transcript").querySelectorAll(".turn").forEach(function (node) { node.remove(); });
    $("channel").textContent = channel;
    update();
    stream = followConversation(channel, apply, setState);
  }

  function parse(data) {
    try {
      var value = JSON.parse(data);
      return value && typeof value === "object" ? value : {};
    } catch (e) {
      return {};
    }
  }

  function turnFor(requestId, prompt) {
    var turn = chat.turns[requestId];
    if (!turn) {
      turn = { id: requestId, prompt: prompt, parts: [], text: null, finish: null,
               error: null, stopping: false, closed: false, node: null };
      chat.turns[requestId] = turn;
      chat.order.push(requestId);
    }
    return turn;
  }

  function apply(type, data, id) {
    chat.events.push({ type: type, id: id });
    if (type === "sentence" || type === "delta") {
      // Answers go one at a time, in order: text belongs to the oldest open question.
      var current = chat.turns[chat.open[0]] || turnFor("orphan-" + id, null);
      current.parts.push([type, data]);
      changed(current);
      return;
    }
    var body = parse(data);
    if (typeof body.request_id !== "string") return;
    var turn = chat.turns[body.request_id];
    if (type === "question") {
      if (turn) return;
      turn = turnFor(body.request_id, String(body.prompt || ""));
      chat.open.push(turn.id);
    } else if (!turn) {
      if (type !== "error") return;
      turn = turnFor(body.request_id, null); // refused before it became a question
    }
    if (type === "restart") {
      turn.parts = [];
    } else if (type === "stop") {
      turn.stopping = !turn.closed;
    } else if (type === "done" || type === "error") {
      turn.closed = true;
      if (type === "done") {
        turn.text = typeof body.text === "string" ? body.text : null;
        turn.finish = body.finish_reason || "stop";
      } else {
        turn.error = String(body.message || body.reason || "failed");
      }
      chat.open = chat.open.filter(function (open) { return open !== turn.id; });
    }
    changed(turn);
  }

  // Sentences arrive without the white space between them: rebuild enough Markdown
  // for blocks (code, list items, table rows, headings) to render while it streams.
  // "done" brings the exact text, which replaces this.
  var BLOCK = /^(```|~~~|[-*+] |\d{1,9}[.)] |\||#|>)/;
  var FENCE = /^(```|~~~)/;

  function markdownOf(turn) {
    if (turn.text !== null) return turn.text;
    var out = "";
    var previous = null;
    turn.parts.forEach(function (part) {
      var text = part[1];
      if (part[0] === "delta") {
        out += text;
        previous = null;
        return;
      }
      if (previous !== null) {
        var fence = FENCE.test(text) || FENCE.test(previous);
        var blocks = BLOCK.test(text) + BLOCK.test(previous);
        out += fence || blocks === 1 ? "\n\n" : blocks === 2 ? "\n" : " ";
      } else if (out && !/\s$/.test(out)) {
        out += " ";
      }
      out += text;
      previous = text;
    });
    return out;
  }

  // -- rendering ----------------------------------------------------------------------

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  // Raw HTML in an answer is shown as text, not run or dropped; DOMPurify then cleans
  // what Markdown itself can make (javascript: links and the like).
  window.marked.use({ renderer: { html: function (token) { return escapeHtml(token.text); } } });

  function render(markdown) {
    return window.DOMPurify.sanitize(window.marked.parse(markdown));
  }

  var dirty = new Set();
  var frame = 0;

  function changed(turn) {
    dirty.add(turn);
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function draw() {
    frame = 0;
    var main = $("transcript");
    var atBottom = main.scrollHeight - main.scrollTop - main.clientHeight < 80;
    dirty.forEach(drawTurn);
    dirty.clear();
    update();
    if (atBottom) main.scrollTop = main.scrollHeight;
  }

  function drawTurn(turn) {
    if (!turn.node) {
      turn.node = document.createElement("article");
      turn.node.className = "turn";
      turn.node.dataset.requestId = turn.id;
      if (turn.prompt !== null) {
        var question = document.createElement("div");
        question.className = "question";
        question.textContent = turn.prompt;
        turn.node.appendChild(question);
      }
      var answer = document.createElement("div");
      answer.className = "answer markdown";
      var meta = document.createElement("div");
      meta.className = "meta";
      turn.node.append(answer, meta);
      $("transcript").appendChild(turn.node);
    }
    var markdown = markdownOf(turn);
    turn.node.querySelector(".answer").innerHTML = render(markdown);
    var status = "";
    if (turn.error) status = "error: " + turn.error;
    else if (turn.finish === "stopped") status = "stopped";
    else if (turn.closed) status = "";
    else if (turn.stopping) status = "stopping…";
    else if (chat.open[0] !== turn.id) status = "waiting for the answer before";
    else status = markdown ? "answering…" : "thinking…";
    var meta = turn.node.querySelector(".meta");
    meta.textContent = status;
    turn.node.dataset.status = turn.error ? "error" : turn.closed ? turn.finish : "open";
  }

  function update() {
    var current = chat.turns[chat.open[0]];
    $("stop").disabled = !current || current.stopping;
    $("empty").hidden = chat.order.length > 0;
    // A question asked while another waits is shown as waiting: redraw the queue.
    chat.open.slice(1).forEach(function (id) {
      var turn = chat.turns[id];
      if (turn.node && !dirty.has(turn)) drawTurn(turn);
    });
  }

  function setState(state, detail) {
    chat.state = state;
    var badge = $("state");
    // Why it reconnects is in the tooltip; why it stopped or reset, in plain sight.
    var shown = detail && (state === "closed" || state === "reset");
    badge.textContent = shown ? state + ": " + detail : state;
    badge.title = detail || "";
    badge.dataset.state = state;
  }

  // -- asking, stopping, new chats ------------------------------------------------------

  function randomId() {
    var bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join("");
  }

  function showProblem(message) {
    var note = document.createElement("p");
    note.className = "problem";
    note.textContent = message;
    $("transcript").appendChild(note);
    setTimeout(function () { note.remove(); }, 8000);
  }

  $("ask").addEventListener("submit", function (e) {
    e.preventDefault();
    var prompt = $("prompt").value.trim();
    if (!prompt) return;
    var request = { prompt: prompt, reply_to: chat.channel, stream: $("stream").value };
    if ($("model").value.trim()) request.model = $("model").value.trim();
    $("send").disabled = true;
    publish("llm.requests", request).then(function () {
      $("prompt").value = "";
    }, function (err) {
      showProblem("could not ask: " + err.message);
    }).then(function () { $("send").disabled = false; });
  });

  $("prompt").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("ask").requestSubmit();
    }
  });

  $("stop").addEventListener("click", function () {
    var current = chat.turns[chat.open[0]];
    if (!current) return;
    $("stop").disabled = true;
    publish(chat.channel, { request_id: current.id }, "stop").catch(function (err) {
      $("stop").disabled = false;
      showProblem("could not stop: " + err.message);
    });
  });

  function channelFromUrl() {
    var channel = new URLSearchParams(location.search).get("c");
    return channel && /^[\w.:\-\/]{1,200}$/.test(channel) ? channel : null;
  }

  $("new-chat").addEventListener("click", function () {
    var channel = "chat." + randomId();
    history.pushState(null, "", "?c=" + encodeURIComponent(channel));
    reset(channel);
    $("prompt").focus();
  });

  window.addEventListener("popstate", function () {
    var channel = channelFromUrl();
    if (channel && channel !== chat.channel) reset(channel);
  });

  $("token").value = token();
  $("token").addEventListener("change", function () {
    try { sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()); } catch (e) { /* none */ }
    reset(chat.channel);
  });

  var first = channelFromUrl();
  if (!first) {
    first = "chat." + randomId();
    history.replaceState(null, "", "?c=" + encodeURIComponent(first));
  }
  reset(first);
})();
