// The hub's demo page: hub.js for streams, fetch for publishing, no build step.
// State of the stream: "connecting" -> "open"; after a drop "reconnecting", then
// "resumed" (hub.js sent Last-Event-ID and the hub replayed what was missed), or
// "reset" when the hub could not honour the cursor (hub.reset). Every tab of the page
// on one hub shares one stream per set of channels (see docs/javascript.md).
import { subscribe } from "./hub.js";

(function () {
  var MAX_ROWS = 1000;
  var $ = function (id) { return document.getElementById(id); };

  // What the page has seen, for people poking at it from the console (and for tests).
  var demo = { state: "closed", states: [], received: [], lastEventId: null, subscription: null };
  window.hubDemo = demo;

  function token() { return $("token").value.trim(); }

  function authHeaders() {
    var headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    return headers;
  }

  // hub.js asks for the token each time it opens a stream: the form's, as it is now.
  var streamOptions = { getToken: function () { return token() || null; } };

  function list(text) {
    return text.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
  }

  function setState(state, detail) {
    demo.state = state;
    demo.states.push(state);
    var badge = $("state");
    badge.textContent = state;
    badge.dataset.state = state;
    badge.className = "state state-" + state;
    $("state-detail").textContent = detail || "";
  }

  function randomId() {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join("");
  }

  // -- following channels ---------------------------------------------------------------

  function show(e) {
    demo.received.push({ id: e.id, type: e.type, data: e.data });
    demo.lastEventId = e.id || demo.lastEventId;
    $("last-id").textContent = demo.lastEventId || "none";
    $("count").textContent = String(demo.received.length);
    var row = document.createElement("tr");
    row.className = "event type-" + e.type.replace(/[^\w-]/g, "_");
    [["id", e.id], ["type", e.type], ["data", e.data]].forEach(function (cell) {
      var td = document.createElement("td");
      td.className = cell[0];
      td.textContent = cell[1];
      row.appendChild(td);
    });
    var body = $("events").tBodies[0];
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  function connect() {
    var channels = list($("channels").value);
    if (!channels.length) return;
    // A new subscription, not setChannels(): the token field may have changed too.
    // It resumes from the cursor hub.js saved for these channels.
    if (demo.subscription) demo.subscription.close();
    demo.subscription = subscribe(channels, {
      onEvent: show,
      onState: function (state, info) {
        if (state === "open") {
          setState(info.resumed ? "resumed" : "open",
            (info.resumed ? "from " + (demo.lastEventId || "now") + " \u00b7 " : "") +
            (info.leader ? "this tab holds the stream" : "shared with another tab"));
        } else if (state === "closed") {
          setState("closed", info.error || "");
        } else {
          setState(state, info.error || "");
        }
      },
      onReset: function (reason, resetChannels, info) {
        setState("reset", reason + ": " + (info.message || resetChannels.join(", ")));
      },
    }, streamOptions);
    $("connect").textContent = "Reconnect";
    $("disconnect").disabled = false;
  }

  function disconnect() {
    if (demo.subscription) demo.subscription.close();
    demo.subscription = null;
    setState("closed", "");
    $("connect").textContent = "Connect";
    $("disconnect").disabled = true;
  }

  $("subscribe").addEventListener("submit", function (e) {
    e.preventDefault();
    connect();
  });
  $("disconnect").addEventListener("click", disconnect);
  $("clear").addEventListener("click", function () {
    demo.received = [];
    $("events").tBodies[0].innerHTML = "";
    $("count").textContent = "0";
  });

  // -- publishing -----------------------------------------------------------------------

  function publish(body) {
    return fetch("publish", {
      method: "POST",
      headers: authHeaders(),
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) throw new Error(answer.message || response.statusText);
        return answer.id;
      });
    });
  }

  $("publish").addEventListener("submit", function (e) {
    e.preventDefault();
    var body = { channel: $("pub-channel").value.trim(), data: $("pub-data").value };
    var type = $("pub-event").value.trim();
    if (type) body.event = type;
    $("pub-result").textContent = "publishing...";
    publish(body).then(
      function (id) { $("pub-result").textContent = "published, id " + id; },
      function (err) { $("pub-result").textContent = "failed: " + err.message; }
    );
  });

  // -- asking the llm worker ------------------------------------------------------------

  var chat = null;

  $("chat").addEventListener("submit", function (e) {
    e.preventDefault();
    if (chat) chat.close();
    var replyTo = "answer." + randomId();
    var answer = $("answer");
    var status = $("chat-status");
    var request = { prompt: $("prompt").value, reply_to: replyTo };
    if ($("model").value.trim()) request.model = $("model").value.trim();
    answer.textContent = "";
    status.textContent = "asking...";
    publish({ channel: "llm.requests", data: request }).then(function (id) {
      // From the request's id: the hub replays whatever the answer already has.
      var quiet = setTimeout(function () {
        status.textContent = "no answer yet: is `hub worker llm` running?";
      }, 10000);
      var handlers = {
        sentence: function (data) {
          clearTimeout(quiet);
          var sentence = document.createElement("span");
          sentence.className = "sentence";
          sentence.textContent = data + " ";
          answer.appendChild(sentence);
          status.textContent = "answering...";
        },
        restart: function () {
          answer.textContent = "";
          status.textContent = "another worker starts the answer over";
        },
        done: function (data) {
          clearTimeout(quiet);
          chat.close();
          var info = JSON.parse(data);
          status.textContent = "done: " + info.sentences + " sentences from " + info.model +
            " in " + info.ms_total + " ms";
        },
        error: function (data) {
          clearTimeout(quiet);
          chat.close();
          status.textContent = "error: " + JSON.parse(data).message;
        },
      };
      chat = subscribe([replyTo], {
        onEvent: function (ev) { if (handlers[ev.type]) handlers[ev.type](ev.data); },
      }, Object.assign({ lastEventId: id }, streamOptions));
    }, function (err) {
      status.textContent = "failed: " + err.message;
    });
  });

  // The token lives in the form and in this tab's sessionStorage, never in the page's
  // URL, where it would leak through history and Referer headers.
  var TOKEN_KEY = "hub-demo-token";
  try { $("token").value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { /* no storage */ }
  $("token").addEventListener("change", function () {
    try { sessionStorage.setItem(TOKEN_KEY, token()); } catch (e) { /* no storage */ }
  });

  // ?channels=a,b pre-fills the form; ?connect=1 connects at once.
  var query = new URLSearchParams(location.search);
  if (query.has("token")) {
    // An old link with ?token=: drop it from the address bar and history, unused.
    query.delete("token");
    var rest = query.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  if (query.get("channels")) {
    $("channels").value = query.get("channels");
    $("pub-channel").value = list(query.get("channels"))[0] || "";
  }
  if (query.get("connect")) connect();
})();
