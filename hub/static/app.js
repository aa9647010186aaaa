// The hub's demo page: plain EventSource and fetch, no build step, no dependencies.
// State of the stream: "connecting" -> "open"; after a drop "reconnecting", then
// "resumed" (EventSource sent Last-Event-ID and the hub replayed what was missed), or
// "reset" when the hub could not honour the cursor (hub.reset).
"use strict";

(function () {
  var MAX_ROWS = 1000;
  var $ = function (id) { return document.getElementById(id); };

  // What the page has seen, for people poking at it from the console (and for tests).
  var demo = { state: "closed", states: [], received: [], lastEventId: null, source: null };
  window.hubDemo = demo;

  function token() { return $("token").value.trim(); }

  function authHeaders() {
    var headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    return headers;
  }

  // EventSource cannot set headers: the token goes in the query string (as in Mercure).
  function streamUrl(channels, lastEventId) {
    var params = channels.map(function (c) { return "channel=" + encodeURIComponent(c); });
    if (lastEventId) params.push("lastEventId=" + encodeURIComponent(lastEventId));
    if (token()) params.push("authorization=" + encodeURIComponent(token()));
    return "events?" + params.join("&");
  }

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

  var listening = {};

  function show(e) {
    demo.received.push({ id: e.lastEventId, type: e.type, data: e.data });
    demo.lastEventId = e.lastEventId || demo.lastEventId;
    $("last-id").textContent = demo.lastEventId || "none";
    $("count").textContent = String(demo.received.length);
    var row = document.createElement("tr");
    row.className = "event type-" + e.type.replace(/[^\w-]/g, "_");
    [e.lastEventId, e.type, e.data].forEach(function (text) {
      var cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    });
    var body = $("events").tBodies[0];
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  function listen(type) {
    var source = demo.source;
    if (!source || listening[type] || type.indexOf("hub.") === 0) return;
    listening[type] = true;
    source.addEventListener(type, show);
  }

  function connect() {
    disconnect();
    var channels = list($("channels").value);
    if (!channels.length) return;
    var source = new EventSource(streamUrl(channels, demo.lastEventId));
    var wasOpen = false;
    demo.source = source;
    listening = {};
    setState("connecting", channels.join(", "));
    source.onopen = function () {
      if (wasOpen) {
        setState("resumed", "from " + (demo.lastEventId || "now"));
      } else {
        setState("open", channels.join(", "));
      }
      wasOpen = true;
    };
    source.onerror = function () {
      // EventSource reconnects by itself after the hub's retry: hint, sending
      // Last-Event-ID; it gives up only on an HTTP error status.
      if (source.readyState === EventSource.CLOSED) {
        setState("closed", "the hub refused the stream; press Connect to try again");
      } else {
        setState("reconnecting", "last id " + (demo.lastEventId || "none"));
      }
    };
    source.addEventListener("hub.reset", function (e) {
      var info = JSON.parse(e.data);
      demo.lastEventId = e.lastEventId || demo.lastEventId;
      setState("reset", info.reason + ": " + info.message);
    });
    listen("message");
    list($("types").value).forEach(listen);
    $("connect").textContent = "Reconnect";
    $("disconnect").disabled = false;
  }

  function disconnect() {
    if (demo.source) demo.source.close();
    demo.source = null;
    setState("closed", "");
    $("connect").textContent = "Connect";
    $("disconnect").disabled = true;
  }

  $("subscribe").addEventListener("submit", function (e) {
    e.preventDefault();
    connect();
  });
  $("disconnect").addEventListener("click", disconnect);
  $("types").addEventListener("change", function () { list($("types").value).forEach(listen); });
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
    if (type) {
      body.event = type;
      listen(type); // so that this page hears what it just sent
    }
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
      var source = new EventSource(streamUrl([replyTo], id));
      chat = source;
      var quiet = setTimeout(function () {
        status.textContent = "no answer yet: is `hub worker llm` running?";
      }, 10000);
      source.addEventListener("sentence", function (ev) {
        clearTimeout(quiet);
        var sentence = document.createElement("span");
        sentence.className = "sentence";
        sentence.textContent = ev.data + " ";
        answer.appendChild(sentence);
        status.textContent = "answering...";
      });
      source.addEventListener("restart", function () {
        answer.textContent = "";
        status.textContent = "another worker starts the answer over";
      });
      source.addEventListener("done", function (ev) {
        clearTimeout(quiet);
        source.close();
        var info = JSON.parse(ev.data);
        status.textContent = "done: " + info.sentences + " sentences from " + info.model +
          " in " + info.ms_total + " ms";
      });
      source.addEventListener("error", function (ev) {
        if (ev.data === undefined) return; // EventSource's own connection error: it reconnects
        clearTimeout(quiet);
        source.close();
        status.textContent = "error: " + JSON.parse(ev.data).message;
      });
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
  if (query.get("types")) $("types").value = query.get("types");
  if (query.get("connect")) connect();
})();
