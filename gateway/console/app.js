// @ts-check
/**
 * The console (docs/browsers.md): sign in with a key, list rooms, and a room's page with its variables,
 * presence and change log live. Two views chosen by the URL's fragment: #/ (rooms) and #/rooms/<id>.
 * The key lives in sessionStorage (gone with the tab) and is only ever sent as a header.
 */
import { Api, ApiError, RoomListener, seg } from "./api.js";

const KEY_STORAGE = "room-gateway.key";
const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const message = /** @type {HTMLElement} */ (document.getElementById("message"));
const status = /** @type {HTMLElement} */ (document.getElementById("status"));
const signOut = /** @type {HTMLButtonElement} */ (document.getElementById("sign-out"));

/** @type {Api | null} */
let api = null;
/** What the current view must undo when it is left (a live stream). @type {(() => void) | null} */
let leave = null;

/**
 * A DOM element; text children are text nodes, never HTML (values from rooms are shown, not parsed).
 * @param {string} tag
 * @param {Record<string, any>} [attrs] attributes; on* are event listeners; true/false toggle a boolean one
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else if (value !== false && value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
  for (const child of children) if (child) element.append(child);
  return element;
}

/**
 * A labelled control: [label, control].
 * @param {string} id
 * @param {string} text
 * @param {HTMLElement} control
 */
function field(id, text, control) {
  control.id = id;
  return h("div", {}, h("label", { for: id }, text), control);
}

/** @param {string} id */
const input = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));

/** @param {string} text */
function announce(text) {
  status.textContent = text;
}

/** Shows what went wrong; a 401 signs out. @param {unknown} error */
function fail(error) {
  if (error instanceof ApiError && error.httpStatus === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    api = null;
    route();
  }
  message.textContent = error instanceof ApiError ? error.describe() : String(error);
}

/**
 * Runs an action of a form or button, showing its error instead of losing it.
 * @param {() => Promise<void>} action
 */
async function attempt(action) {
  message.textContent = "";
  try {
    await action();
  } catch (error) {
    fail(error);
  }
}

/**
 * Parses a JSON editor's text, marking it invalid (with the parser's message) when it is not JSON.
 * @param {HTMLTextAreaElement} editor
 * @returns {{ok: true, value: unknown} | {ok: false}}
 */
function parseJson(editor) {
  const error = /** @type {HTMLElement} */ (document.getElementById(`${editor.id}-error`));
  try {
    const value = JSON.parse(editor.value);
    editor.removeAttribute("aria-invalid");
    error.textContent = "";
    return { ok: true, value };
  } catch (e) {
    editor.setAttribute("aria-invalid", "true");
    error.textContent = `Not valid JSON: ${e instanceof Error ? e.message : e}`;
    editor.focus();
    return { ok: false };
  }
}

/**
 * A labelled JSON editor with its error line.
 * @param {string} id
 * @param {string} text
 * @param {string} initial
 */
function jsonEditor(id, text, initial) {
  const editor = h("textarea", { rows: 3, spellcheck: "false", "aria-describedby": `${id}-error` }, initial);
  return h("div", {}, field(id, text, editor), h("p", { id: `${id}-error`, class: "error" }));
}

/** @param {HTMLElement[]} nodes */
function show(...nodes) {
  main.replaceChildren(...nodes);
  main.focus();
}

function signInView() {
  signOut.hidden = true;
  const form = h(
    "form",
    {
      onsubmit: (/** @type {Event} */ event) => {
        event.preventDefault();
        const candidate = new Api(input("key").value.trim());
        void attempt(async () => {
          await candidate.call("GET", "/v1/rooms?maxResults=1"); // proves the key (rooms:read)
          sessionStorage.setItem(KEY_STORAGE, candidate.key);
          api = candidate;
          route();
        });
      },
    },
    field("key", "API key", h("input", { type: "password", autocomplete: "off", required: true, size: 48 })),
    h("button", { type: "submit" }, "Sign in"),
  );
  show(
    h("h1", {}, "Sign in"),
    h("p", {}, "The key stays in this tab only (sessionStorage) and is sent as the X-API-Key header."),
    form,
  );
}

/** @param {Api} client */
function roomsView(client) {
  /** @type {string[]} the startAfterKey of each page seen, for Previous */
  const pages = [""];
  const body = h("tbody");
  const previous = h("button", { type: "button", class: "secondary", onclick: () => load(-1) }, "Previous page");
  const next = h("button", { type: "button", class: "secondary", onclick: () => load(1) }, "Next page");
  const statusFilter = h("select", { onchange: () => load(0) }, ...["", "OPEN", "CLOSED", "DELETED"].map(
    (value) => h("option", { value }, value || "All"),
  ));
  const pageSize = h("select", { onchange: () => { pages.length = 1; load(0); } }, ...["10", "25", "100"].map(
    (value) => h("option", { value, selected: value === "25" }, value),
  ));

  /** @param {number} step -1, 0 or 1 page */
  function load(step) {
    void attempt(async () => {
      if (step < 0 && pages.length > 1) pages.pop();
      const after = step > 0 ? String(next.dataset.after) : pages[pages.length - 1];
      const size = /** @type {HTMLSelectElement} */ (pageSize).value;
      const query = new URLSearchParams({ maxResults: size });
      if (after) query.set("startAfterKey", after);
      const page = await client.call("GET", `/v1/rooms?${query}`);
      if (step > 0) pages.push(after);
      const wanted = /** @type {HTMLSelectElement} */ (statusFilter).value;
      /** @type {any[]} */
      const rooms = page.results ?? [];
      body.replaceChildren(...rooms.filter((room) => !wanted || room.status === wanted).map((room) => h(
        "tr", {},
        h("td", {}, h("a", { href: `#/rooms/${seg(room.roomId)}` }, room.roomId)),
        h("td", {}, room.displayName ?? ""),
        h("td", {}, h("span", { class: `badge ${room.status}` }, room.status)),
        h("td", {}, String(room.numUsers ?? 0)),
      )));
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 4 }, "No rooms on this page.")));
      next.dataset.after = rooms.length ? rooms[rooms.length - 1].roomId : "";
      /** @type {HTMLButtonElement} */ (next).disabled = !page.more;
      /** @type {HTMLButtonElement} */ (previous).disabled = pages.length <= 1;
      announce(`${rooms.length} rooms shown`);
    });
  }

  const create = h(
    "form",
    {
      onsubmit: (/** @type {Event} */ event) => {
        event.preventDefault();
        void attempt(async () => {
          const room = await client.call("POST", "/v1/rooms", {
            roomId: input("new-room").value,
            displayName: input("new-name").value,
          });
          location.hash = `#/rooms/${seg(room.roomId)}`;
        });
      },
    },
    h("div", { class: "row" },
      field("new-room", "Room id", h("input", { required: true })),
      field("new-name", "Display name", h("input", {})),
      h("button", { type: "submit" }, "Create room")),
  );
  show(
    h("h1", {}, "Rooms"),
    h("section", { "aria-labelledby": "create-title" }, h("h2", { id: "create-title" }, "New room"), create),
    h("section", { "aria-labelledby": "list-title" },
      h("h2", { id: "list-title" }, "All rooms"),
      h("div", { class: "row" }, field("status-filter", "Status (this page)", statusFilter),
        field("page-size", "Rooms per page", pageSize)),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Room id"), h("th", {}, "Name"), h("th", {}, "Status"),
        h("th", {}, "Users"))), body),
      previous, next),
  );
  load(0);
}

/**
 * @param {Api} client
 * @param {string} roomId
 */
function roomView(client, roomId) {
  const path = `/v1/rooms/${seg(roomId)}`;
  /** @type {Map<string, {value: unknown, version: string}>} */
  const variables = new Map();
  /** The snapshot's seq: a change at or before it is already in `variables`. */
  let snapshotSeq = 0;
  const heading = h("h1", {}, roomId);
  const roomStatus = h("span", { class: "badge" });
  const live = h("span", { class: "live", id: "live" }, "connecting…");
  const variableRows = h("tbody", { id: "variables" });
  const members = h("ul", { id: "members" });
  const counts = h("p", { id: "counts" });
  const changes = h("ol", { class: "changes", id: "changes", "aria-label": "Changes, newest first" });
  const tokenOut = h("input", { readonly: true, size: 60, id: "token" });

  function renderVariables() {
    const rows = [...variables.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([name, { value, version }]) =>
      h("tr", {}, h("td", {}, name), h("td", {}, h("code", {}, JSON.stringify(value))), h("td", {}, version)));
    variableRows.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 3 }, "No variables."))]));
  }

  async function loadRoom() {
    const room = await client.call("GET", path);
    roomStatus.textContent = room.status;
    roomStatus.className = `badge ${room.status}`;
    heading.textContent = room.displayName ? `${room.displayName} (${roomId})` : roomId;
  }

  async function loadContents() {
    const snapshot = await client.call("GET", `${path}/contents`);
    variables.clear();
    for (const [name, value] of Object.entries(snapshot.contents ?? {})) variables.set(name, { value, version: "" });
    snapshotSeq = Number(snapshot.seq ?? 0);
    renderVariables();
    return snapshot;
  }

  async function loadPresence() {
    const presence = await client.call("GET", `${path}/presence`);
    counts.textContent = `Users: ${presence.numUsers ?? 0}, connections: ${presence.numConnections ?? 0}`;
    /** @type {any[]} */
    const list = presence.members ?? [];
    members.replaceChildren(...list.map((member) => h("li", {}, `${member.userId} (${member.connections} connections)`,
      member.info && Object.keys(member.info).length ? h("code", {}, ` ${JSON.stringify(member.info)}`) : null)));
  }

  /** @param {any} change */
  function onChange(change) {
    const seq = Number(change.seq);
    const what = change.variable?.name ?? change.event?.name ?? change.member?.userId ?? "";
    changes.prepend(h("li", { value: change.seq }, `${change.kind} ${what}`));
    while (changes.children.length > 200) changes.lastElementChild?.remove();
    switch (change.kind) {
      case "VARIABLE_SET":
        if (seq > snapshotSeq) variables.set(change.variable.name, { value: change.variable.value, version: change.variable.version });
        renderVariables();
        break;
      case "VARIABLE_DELETED":
        if (seq > snapshotSeq) variables.delete(change.variable.name);
        renderVariables();
        break;
      case "MEMBER_JOINED":
      case "MEMBER_LEFT":
        void attempt(loadPresence);
        break;
      case "ROOM_UPDATED":
      case "ROOM_CLOSED":
      case "ROOM_DELETED":
        void attempt(loadRoom);
        break;
      case "RESET": // the stream could not resume from our position: read the state again
        void attempt(async () => { await loadContents(); });
        break;
    }
  }

  const setForm = h("form", {
    onsubmit: (/** @type {Event} */ event) => {
      event.preventDefault();
      const parsed = parseJson(/** @type {HTMLTextAreaElement} */ (document.getElementById("var-value")));
      if (!parsed.ok) return;
      void attempt(async () => {
        const name = input("var-name").value;
        const variable = await client.call("PUT", `${path}/variables/${seg(name)}`, { value: parsed.value });
        announce(`${name} set (version ${variable.version})`);
      });
    },
  }, field("var-name", "Variable name", h("input", { required: true })), jsonEditor("var-value", "Value (JSON)", "\"hello\""),
  h("button", { type: "submit" }, "Set variable"));

  const eventForm = h("form", {
    onsubmit: (/** @type {Event} */ event) => {
      event.preventDefault();
      const parsed = parseJson(/** @type {HTMLTextAreaElement} */ (document.getElementById("event-data")));
      if (!parsed.ok) return;
      void attempt(async () => {
        const name = input("event-name").value;
        await client.call("POST", `${path}/events/${seg(name)}`, { data: parsed.value });
        announce(`event ${name} published`);
      });
    },
  }, field("event-name", "Event name", h("input", { required: true })), jsonEditor("event-data", "Data (JSON)", "{}"),
  h("button", { type: "submit" }, "Publish event"));

  const tokenForm = h("form", {
    onsubmit: (/** @type {Event} */ event) => {
      event.preventDefault();
      const info = parseJson(/** @type {HTMLTextAreaElement} */ (document.getElementById("token-info")));
      if (!info.ok) return;
      void attempt(async () => {
        const minted = await client.call("POST", `${path}/tokens`, {
          userName: input("token-user").value,
          role: /** @type {HTMLSelectElement} */ (document.getElementById("token-role")).value,
          ttlSeconds: Number(input("token-ttl").value),
          info: info.value,
        });
        /** @type {HTMLInputElement} */ (tokenOut).value = minted.token;
        announce(`token minted, expires ${minted.expireTime}`);
      });
    },
  },
  h("div", { class: "row" },
    field("token-user", "User name", h("input", { required: true })),
    field("token-role", "Role", h("select", {}, h("option", { value: "guest" }, "guest"), h("option", { value: "moderator" }, "moderator"))),
    field("token-ttl", "Lifetime (seconds)", h("input", { type: "number", min: 1, value: 3600, required: true }))),
  jsonEditor("token-info", "Info shown in presence (JSON object)", "{}"),
  h("button", { type: "submit" }, "Mint token"),
  field("token", "Token", tokenOut),
  h("button", { type: "button", class: "secondary", onclick: () => void attempt(async () => {
    /** @type {HTMLInputElement} */ (tokenOut).select();
    await navigator.clipboard.writeText(/** @type {HTMLInputElement} */ (tokenOut).value);
    announce("token copied");
  }) }, "Copy token"));

  const closeButton = h("button", { type: "button", class: "danger", onclick: () => {
    if (!confirm(`Close room ${roomId}? It keeps its data but refuses new streams and tokens.`)) return;
    void attempt(async () => { await client.call("POST", `${path}:close`); await loadRoom(); announce("room closed"); });
  } }, "Close room");
  const deleteButton = h("button", { type: "button", class: "danger", onclick: () => {
    if (!confirm(`Delete room ${roomId} and all its data? Its id can never be used again.`)) return;
    void attempt(async () => { await client.call("DELETE", path); announce("room deleted"); location.hash = "#/"; });
  } }, "Delete room");

  show(
    h("p", {}, h("a", { href: "#/" }, "← Rooms")),
    heading,
    h("p", {}, roomStatus, " ", live),
    h("div", { class: "grid" },
      h("section", { "aria-labelledby": "vars-title" }, h("h2", { id: "vars-title" }, "Variables"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Value"), h("th", {}, "Version"))), variableRows),
        setForm),
      h("section", { "aria-labelledby": "presence-title" }, h("h2", { id: "presence-title" }, "Presence"), counts, members),
      h("section", { "aria-labelledby": "changes-title" }, h("h2", { id: "changes-title" }, "Change log"), changes),
      h("section", { "aria-labelledby": "event-title" }, h("h2", { id: "event-title" }, "Publish an event"), eventForm),
      h("section", { "aria-labelledby": "token-title" }, h("h2", { id: "token-title" }, "Room token"), tokenForm),
      h("section", { "aria-labelledby": "actions-title" }, h("h2", { id: "actions-title" }, "Room"), closeButton, deleteButton)),
  );

  void attempt(async () => {
    await loadRoom();
    const snapshot = await loadContents();
    await loadPresence();
    // Start a little before the snapshot, to show the last changes in the log (they do not touch the
    // variables: their seq is not past the snapshot's).
    const from = { seq: String(Math.max(0, snapshotSeq - 20)), epoch: snapshot.epoch };
    const listener = new RoomListener(client, roomId, from, onChange, (state, detail) => {
      live.textContent = state === "live" ? "● live" : `${state}${detail ? `: ${detail}` : "…"}`;
    });
    leave = () => listener.stop();
  });
}

/** Shows the view of the URL's fragment. */
function route() {
  leave?.();
  leave = null;
  message.textContent = "";
  if (api === null) {
    signInView();
    return;
  }
  signOut.hidden = false;
  const match = location.hash.match(/^#\/rooms\/(.+)$/);
  if (match) roomView(api, decodeURIComponent(match[1]));
  else roomsView(api);
}

signOut.addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  api = null;
  route();
});
window.addEventListener("hashchange", route);
const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) api = new Api(saved);
route();
