// The storefront (docs/storefront.md): the shop in a browser, over the public HTTP/JSON API that the edge
// serves on the same origin. Every call is one of ShopService's routes, as /openapi.json describes them;
// the page keeps no data the API does not give it, except the cart (localStorage, until checkout or sign-out)
// and the session's token (sessionStorage: gone with the tab or at sign-out).
//
// Elements are built from data as text (textContent), never as HTML: a product name cannot become markup.
// The edge's Content-Security-Policy refuses any script but this file (and the modules it imports) besides.

import { COUNTRIES } from "./countries.js";

const PAGE_SIZE = 12;
const RECOMMENDATIONS = 4;
const CART = "shopmesh.cart";
// Quantities and a card's expiry are int32 in the API. A larger number typed goes out as the largest one,
// which orders refuses beside its field; sent as typed, the edge refused the whole request without naming it.
const INT32_MAX = 2147483647;
const int32 = (number) => Math.min(number, INT32_MAX);
const SESSION = "shopmesh.session";
// localStorage: when this browser last signed out (ms). sessionStorage is the tab's, copied into a tab opened
// from it or duplicated: a sign-out in one tab must end the copies too, live or restored later.
const SIGNED_OUT = "shopmesh.signedOut";
// sessionStorage slots of requests whose outcome is not settled yet: their idempotency keys.
const CHECKOUT = "shopmesh.checkout";
const CANCEL = "shopmesh.cancel.";
// sessionStorage: what was typed into a form whose session ended as it was sent (its fields marked `keep`: the
// shipping address, never a card's number or CVV), put back when the form is shown again after signing in.
const KEPT_FORM = "shopmesh.form.";
const SESSION_ENDED = "Your session has ended; sign in to continue.";
// The checkout form's id: the cart's quantity inputs, outside it, belong to it.
const CHECKOUT_FORM = "checkout";
// A kept key is reused for this long at most (the services keep theirs for 48 hours).
const KEY_LIFETIME_MS = 24 * 60 * 60 * 1000;
const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";
const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo";
// ErrorInfo's reason for a page token the services refuse: the client must start again from the first page.
const INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN";
// gRPC codes the page tells apart (google.rpc.Code).
const UNKNOWN = 2;
const INVALID_ARGUMENT = 3;
const DEADLINE_EXCEEDED = 4;
const NOT_FOUND = 5;
const ALREADY_EXISTS = 6;
const FAILED_PRECONDITION = 9;
const ABORTED = 10;
const INTERNAL = 13;
const UNAVAILABLE = 14;
const UNAUTHENTICATED = 16;
// Answers that may come while the request was carried out, or is still being (ABORTED: another attempt with
// the same key is running): only the same request with the same key can tell, without doing it twice.
const OUTCOME_UNKNOWN = new Set([UNKNOWN, DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNAVAILABLE]);
// Answers that settle a request as it was sent: refused (INVALID_ARGUMENT), about something that does not
// exist (NOT_FOUND: the order or a product), or carried to an end the service states (FAILED_PRECONDITION: a
// declined card's cancelled order, an order that cannot be cancelled). Sent again, it would get the same.
const SETTLED = new Set([INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION]);
// HTTP statuses of the edge's own answers when the gateway is away (502, 503) or slow past its bound (504).
const GATEWAY_AWAY = new Set([502, 503, 504]);
const SHOP_AWAY = "The shop is unavailable right now; please try again shortly.";
// Codes whose messages are written for the person who asked (a declined card, a wrong password, an order not
// found, an address already registered). Any other code's message is about the shop's insides ("orders is
// unavailable (DEADLINE_EXCEEDED)": a service's name and a gRPC code), and the page says its own sentence.
const CUSTOMER_MESSAGES = new Set([INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNAUTHENTICATED]);
const PERMISSION_DENIED = 7;
const RESOURCE_EXHAUSTED = 8;
const OWN_SENTENCES = new Map([
  [PERMISSION_DENIED, "This cannot be done with your account."],
  [ABORTED, "Your earlier request is still being carried out; please try again shortly."],
  [RESOURCE_EXHAUSTED, "The shop is busy with too many requests; please try again shortly."],
]);
// An INVALID_ARGUMENT's message is the service's ("invalid request: password: is too easy to guess"): each
// violation is said beside its field, or listed under one of these, in words of the shop's.
const FIX_MARKED = "Please correct the fields marked on this page.";
const FIX_LISTED = "Please correct the following:";
// ErrorInfo's reason when a request's idempotency key was already used for another request (common/v1).
const KEY_REUSED = "IDEMPOTENCY_KEY_REUSED";

// ---- The API ------------------------------------------------------------------------------------------

// A call that did not succeed: the google.rpc.Status the edge answered with, its details read out.
class ApiError extends Error {
  constructor(httpStatus, status, { authRequired = false, traceId = null } = {}) {
    super(status.message || `The shop answered ${httpStatus}.`);
    // The trace the call started, if it was sent: the reference to quote about it.
    this.traceId = traceId;
    this.httpStatus = httpStatus;
    // A proxy's own error page is no google.rpc.Status: whatever it was, it is not a settled answer.
    this.code = Number.isInteger(status.code) ? status.code : UNKNOWN;
    // The call needed the session's token (a 401 then means: sign in again).
    this.authRequired = authRequired;
    const details = Array.isArray(status.details) ? status.details : [];
    const of = (type) => details.find((detail) => detail["@type"] === type);
    this.violations = of(BAD_REQUEST)?.fieldViolations ?? [];
    this.info = of(ERROR_INFO) ?? null;
    this.retryDelay = of(RETRY_INFO)?.retryDelay ?? null;
  }

  // The session's token was refused (expired, or its key revoked), or there was none: sign in again.
  get needsSignIn() {
    return this.httpStatus === 401 && this.authRequired;
  }

  // The call may have been carried out or not (the shop unreachable, no answer in time, a proxy's 5xx).
  get outcomeUnknown() {
    return this.httpStatus === 0 || this.httpStatus >= 500 || OUTCOME_UNKNOWN.has(this.code);
  }

  get settled() {
    return this.httpStatus !== 0 && this.httpStatus < 500 && SETTLED.has(this.code);
  }
}

// endsSession: a 401 to this call ends the page's session. Not for the sign-out's own call: the page ended
// that session as it sent it, and its answer may come after the shopper signed in again.
async function call(
  method,
  path,
  { query = {}, body, auth = false, idempotencyKey, keepalive = false, endsSession = true } = {},
) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
  // W3C Trace Context: each call starts a trace, as a browser's OpenTelemetry instrumentation of fetch would.
  // The edge's span and every service's join it; a failed call shows its trace id as the reference to
  // quote (`make traces ID=<it>` locally, or a trace backend's search, shows where the call went).
  const traceId = randomHex(16);
  headers.traceparent = `00-${traceId}-${randomHex(8)}-01`;
  if (auth) {
    const session = currentSession();
    if (!session)
      throw new ApiError(401, { code: UNAUTHENTICATED, message: "Please sign in." }, { authRequired: auth });
    headers.authorization = `Bearer ${session.token}`;
  }
  let response;
  let text;
  try {
    // no-store: the answers are the shopper's (orders, e-mails); the browser's disk cache kept them after
    // sign-out. The edge says the same (Cache-Control: no-store).
    const sent = body === undefined ? undefined : JSON.stringify(body);
    response = await fetch(url, { method, headers, body: sent, cache: "no-store", keepalive });
    // The body can be lost after the headers came (a reset mid-answer, a proxy's idle timeout): the request
    // may have been carried out all the same, so its outcome is unknown, as with no answer at all.
    text = await response.text();
  } catch {
    throw new ApiError(
      0,
      { code: UNAVAILABLE, message: "The shop could not be reached." },
      { authRequired: auth, traceId },
    );
  }
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = null;
  }
  // An error that is no google.rpc.Status (a proxy's HTML page for a 413, 431 or 500) is told by its status
  // alone ("The shop answered 413."): its markup is no message for a shopper.
  const isStatus = data !== null && typeof data === "object" && !Array.isArray(data);
  if (!response.ok && !(isStatus && Number.isInteger(data.code))) data = {};
  else if (!isStatus) data = { message: text };
  if (!response.ok) {
    // The token was refused (expired, or its key revoked): a wrong password at sign-in is no session's end.
    if (response.status === 401 && auth && endsSession) endSession();
    const explained = Array.isArray(data.details) && data.details.some((detail) => detail["@type"] === ERROR_INFO);
    if (GATEWAY_AWAY.has(response.status) && !explained) {
      // The edge's own answer that the gateway is away or did not answer in time (a Status with no ErrorInfo:
      // the gateway's own answers carry one): its text is Envoy's ("upstream connect error ..."), not for a
      // shopper.
      data = { code: Number.isInteger(data.code) ? data.code : UNAVAILABLE, message: SHOP_AWAY };
    } else if (Number.isInteger(data.code) && !CUSTOMER_MESSAGES.has(data.code)) {
      data = { ...data, message: OWN_SENTENCES.get(data.code) ?? SHOP_AWAY };
    }
    const error = new ApiError(response.status, data, { authRequired: auth, traceId });
    // The service's own refusal of the request's fields: its message is said in the shop's words (errorBox).
    error.fieldRefusal = error.code === INVALID_ARGUMENT && error.violations.length > 0;
    throw error;
  }
  return data;
}

const api = {
  register: (body) => call("POST", "/v1/users", { body }),
  login: (body) => call("POST", "/v1/login", { body }),
  products: (query) => call("GET", "/v1/products", { query: { pageSize: PAGE_SIZE, ...query } }),
  search: (query) => call("GET", "/v1/products:search", { query: { pageSize: PAGE_SIZE, ...query } }),
  productPage: (id) =>
    call("GET", `/v1/products/${encodeURIComponent(id)}`, { query: { maxRecommendations: RECOMMENDATIONS } }),
  placeOrder: (body, idempotencyKey) => call("POST", "/v1/orders", { body, auth: true, idempotencyKey }),
  order: (id) => call("GET", `/v1/orders/${encodeURIComponent(id)}`, { auth: true }),
  orders: (query) => call("GET", "/v1/orders", { query: { pageSize: PAGE_SIZE, ...query }, auth: true }),
  cancelOrder: (id, idempotencyKey) =>
    call("POST", `/v1/orders/${encodeURIComponent(id)}:cancel`, {
      body: { reason: "Cancelled by the customer in the storefront." },
      auth: true,
      idempotencyKey,
    }),
  notifications: (query) => call("GET", "/v1/notifications", { query: { pageSize: PAGE_SIZE, ...query }, auth: true }),
  // keepalive: the request outlives the page, so a tab closed right after its sign-out still ends the token.
  // A 401 (the token already revoked elsewhere) must not end the session the shopper may have started since.
  signOut: () => call("POST", "/v1/session:signout", { body: {}, auth: true, keepalive: true, endsSession: false }),
};

// ---- What the page keeps --------------------------------------------------------------------------------

function readJson(storage, key, fallback) {
  try {
    return JSON.parse(storage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function currentSession() {
  const session = readJson(sessionStorage, SESSION, null);
  if (!session || Date.parse(session.expiresAt) <= Date.now()) return null;
  // A copy of a session from before a sign-out in another tab (a tab restored or duplicated since, or one
  // that did not hear of it): signed out with it. A session without `since` predates the field.
  const signedOut = localStorage.getItem(SIGNED_OUT);
  if (signedOut !== null && !(Number(session.since) > Number(signedOut))) {
    forgetSession();
    return null;
  }
  return session;
}

function startSession(login, email) {
  // As users keeps it: the receipt's address is prefilled from it, and orders takes no stray spaces.
  const account = email.trim().toLowerCase();
  sessionStorage.setItem(
    SESSION,
    JSON.stringify({
      token: login.accessToken,
      userId: login.userId,
      expiresAt: login.expiresAt,
      email: account,
      since: Date.now(),
    }),
  );
}

// (Pending idempotency keys stay: they are the user's, and a checkout whose answer was lost must be sent with
// its key again after signing in again.)
function endSession() {
  sessionStorage.removeItem(SESSION);
  showSession();
}

// What signing out removes from this tab's storage: the token and the kept keys of checkouts and
// cancellations (what identifies a checkout is its shipping address and card's last four and expiry).
function forgetSession() {
  for (const slot of Object.keys(sessionStorage)) {
    if (slot === SESSION || slot === CHECKOUT || slot.startsWith(CANCEL) || slot.startsWith(KEPT_FORM))
      sessionStorage.removeItem(slot);
  }
}

// A cart line as the page stores it. The cart is localStorage, which anything on this origin (an older page,
// an extension, a person) may have written in another shape: '{}' broke every page, a line without its price
// the cart page.
const wellFormed = (item) =>
  typeof item?.productId === "string" &&
  typeof item.name === "string" &&
  Number.isSafeInteger(item.quantity) &&
  item.quantity > 0 &&
  /^-?\d+$/.test(String(item.unitPrice?.amountMinor)) &&
  typeof item.unitPrice.currency === "string";

const cart = {
  // Only its well-formed lines: the rest is dropped when the cart is next saved.
  items: () => {
    const items = readJson(localStorage, CART, []);
    return Array.isArray(items) ? items.filter(wellFormed) : [];
  },
  save(items) {
    localStorage.setItem(CART, JSON.stringify(items));
    showCartSize();
  },
  add(product, quantity) {
    const items = cart.items();
    const line = items.find((item) => item.productId === product.id);
    if (line) line.quantity = int32(line.quantity + quantity);
    else items.push({ productId: product.id, name: product.name, unitPrice: product.price, quantity });
    cart.save(items);
  },
  setQuantity(productId, quantity) {
    cart.update((item) => (item.productId === productId ? { ...item, quantity } : item));
  },
  // What an order took: its quantities come out of the cart, product by product. Not the whole cart: another
  // tab may have added to it while the order was out, and that stays for the next one.
  takeOut(ordered) {
    const taken = new Map(ordered.map((item) => [item.productId, item.quantity]));
    cart.update((item) => ({ ...item, quantity: item.quantity - (taken.get(item.productId) ?? 0) }));
  },
  // Each line changed by `change`; a line left with no quantity leaves the cart.
  update(change) {
    cart.save(
      cart
        .items()
        .map(change)
        .filter((item) => item.quantity > 0),
    );
  },
};

// The cart's lines as the cart page shows them (null on any other page): what its checkout orders, at their
// total. Another tab shares the cart (localStorage) and may change it at any time; the page orders only a
// cart it has shown.
let cartShown = null;

// What of a line the customer sees and pays for.
const cartLine = ({ productId, name, unitPrice, quantity }) => [
  productId,
  name,
  unitPrice?.amountMinor,
  unitPrice?.currency,
  quantity,
];

function sameCart(one, other) {
  return JSON.stringify(one.map(cartLine)) === JSON.stringify(other.map(cartLine));
}

// A checkout request is out (from "Place order" until its answer is handled). The cart page is not redrawn
// under it: the redraw enabled "Place order" again, and a second press ordered the cart as it then was under
// a new idempotency key while the first order could still go through. The redraw is held and made once
// the answer is in (after a success the page goes to the order instead).
// `unknown`: the checkout's outcome is unknown (no answer, a 5xx), and the page says placing it again is safe.
// That holds only for the same request, under the same key: the page keeps showing the cart it ordered, and
// holds a change of another tab as while the request was out. Redrawn into the changed cart, "Place order"
// ordered that cart under a new key while the first order may have gone through. The redraw is made once an
// answer settles the outcome (a refusal; a success goes to the order), or on leaving the page.
// `answer`: the last checkout's refusal on this page when it is about the order or its lines (a declined card
// and its cancelled order, a line short of stock), its complaints about lines and the lines they name
// (`items`). Another tab's change redraws the page, which had wiped it: the tab that lost a race for the last
// unit said only that its cart was now empty. It is shown again with each redraw until the shopper acts
// (places the order again, sets a quantity, edits a field of the form, leaves).
const checkout = { out: false, redrawDue: false, unknown: false, answer: null };

const CHANGED_ELSEWHERE = "Your cart was changed in another tab: it is shown here as it now is.";
const CHANGED_BEFORE_ORDER =
  "Your cart was changed in another tab: it is shown here as it now is. Nothing was ordered or charged; " +
  "check it, then place the order again.";
const CHANGED_WHILE_UNKNOWN =
  "Your cart was changed in another tab. It is shown here once the outcome of this order is known: until " +
  "then the cart below is the one it ordered, so that placing it again is the same order, never a second one.";

// The cart page again, with the cart as stored now, told why; what was typed into the checkout form stays
// (the card too: it never left the page), and so does the last checkout's refusal kept (`checkout.answer`).
async function showCartChanged(message) {
  // The form's own inputs: the quantities outside it (their `form` attribute) are the cart's, shown anew.
  const fieldsOf = (form) => [...(form?.querySelectorAll("input, select") ?? [])];
  const typed = fieldsOf(document.getElementById(CHECKOUT_FORM)).map((input) => [input.name, input.value]);
  const { answer } = checkout;
  flash(message);
  await route();
  checkout.answer = answer;
  const form = document.getElementById(CHECKOUT_FORM);
  const fields = fieldsOf(form);
  for (const [name, value] of typed) {
    const input = fields.find((field) => field.name === name);
    if (input) input.value = value;
  }
  if (!answer) return;
  // Its complaints about lines, on those lines as the page now shows them (each showing marks them shown).
  answer.error.violations = answer.violations.map((violation) => ({ ...violation }));
  const error = onLinesShown(answer.error, answer.items);
  // A cart left with no checkout form (emptied, or of two currencies) still tells what became of the order.
  if (form) showProblems(form, error);
  else document.getElementById("view").append(errorBox(error));
}

// A change of another tab heard of on the cart page: shown now, or once the checkout request out has ended.
function cartChangedElsewhere() {
  if (checkout.unknown) flash(CHANGED_WHILE_UNKNOWN);
  if (checkout.out || checkout.unknown) checkout.redrawDue = true;
  else showCartChanged(CHANGED_ELSEWHERE);
}

// `count` random bytes in hex (crypto.randomUUID needs a secure context; an http:// host other than
// localhost is none).
function randomHex(count) {
  return Array.from(crypto.getRandomValues(new Uint8Array(count)), (byte) => byte.toString(16).padStart(2, "0")).join(
    "",
  );
}

// A key unguessable enough to name one checkout or cancel.
function newIdempotencyKey() {
  return `web-${randomHex(16)}`;
}

// Sends a request with an idempotency key kept in sessionStorage (`slot`) for this user and this request
// until an answer settles it. Sent again meanwhile (its answer lost, UNAVAILABLE, a 409 while the first
// attempt still runs, after signing in again), it carries the same key and gets the first attempt's outcome:
// never a second order or charge. A changed request, or one sent after success or a settled refusal, gets a
// new key. `what` is what identifies the request: no card number or CVV (it stays in the tab's storage).
async function idempotently(slot, what, send) {
  const session = currentSession();
  // Signed out (the token expired): sign in first. The key kept for this user's request stays as it is, for
  // the same request after signing in again; made for "nobody", it replaced that key, and the checkout whose
  // answer was lost was placed a second time.
  if (!session) throw new ApiError(401, { code: UNAUTHENTICATED, message: "Please sign in." }, { authRequired: true });
  const fingerprint = JSON.stringify([session.userId, what]);
  const pending = readJson(sessionStorage, slot, null);
  // A key left by an earlier load of the page, whose answer it never saw, stays with the next attempt even
  // when the request changed: under a new key a corrected re-submit placed and charged a second order. Under
  // it, the first order (if it came through) answers instead (or IDEMPOTENCY_KEY_REUSED for another request).
  const carried = pending !== null && pending.key === unseenCheckout?.key && ownSlot(pending, session);
  const reuse = (pending?.fingerprint === fingerprint || carried) && Date.now() - pending.since < KEY_LIFETIME_MS;
  const key = reuse ? pending.key : newIdempotencyKey();
  if (!reuse) sessionStorage.setItem(slot, JSON.stringify({ fingerprint, key, since: Date.now() }));
  try {
    const answer = await send(key);
    sessionStorage.removeItem(slot);
    return answer;
  } catch (error) {
    // Only an answer settles the request: anything else (an error that is no ApiError) says nothing of
    // whether it was carried out, and the key stays for sending it again.
    if (error instanceof ApiError && error.settled) sessionStorage.removeItem(slot);
    else if (error instanceof ApiError && error.outcomeUnknown) error.retrySafe = true;
    throw error;
  }
}

// Whether a kept slot was made for the user of `session` (its fingerprint's first part).
function ownSlot(pending, session) {
  try {
    return JSON.parse(pending.fingerprint)[0] === session.userId;
  } catch {
    return false;
  }
}

// ---- Building the page ----------------------------------------------------------------------------------

// An element: attributes (on* are listeners), then children (strings become text nodes).
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) element.append(child);
  }
  return element;
}

// Text a person typed (a name, an address line, a query), shown next to the page's own: in its own bidi
// isolate, so a right-to-left name reads right to left and an override in it (U+202E, which catalog, users and
// orders keep) reverses nothing outside it ("Ships to evil, 1 Main St" read "ts niaM 1 ,live").
// Its unpaired direction controls are dropped (as notifications' emails.py isolated_name does): Chromium draws a
// <bdi> as U+2068 … U+2069, so a lone U+2069 in the text closed it early, and an override after it reached the
// page's text ("Ships to Eve\u2069\u202eevil, 1 Analytical Way, London" drew London left of Analytical).
function isolated(text) {
  return h("bdi", {}, pairedControls(text));
}

const OPENS_EMBEDDING = new Set(["\u202a", "\u202b", "\u202d", "\u202e"]);
const OPENS_ISOLATE = new Set(["\u2066", "\u2067", "\u2068"]);

// `text` without the direction controls that the bidi algorithm would not pair: U+202C closes an embedding or
// override only when one is the innermost level open, U+2069 closes the innermost isolate and every embedding
// opened inside it; an opener left open, or a closer with nothing of its kind to close, is dropped.
function pairedControls(text) {
  const units = text.split("");
  const open = [];
  units.forEach((unit, index) => {
    if (OPENS_EMBEDDING.has(unit) || OPENS_ISOLATE.has(unit)) {
      open.push(index);
    } else if (unit === "\u202c") {
      if (open.length && OPENS_EMBEDDING.has(units[open.at(-1)])) open.pop();
      else units[index] = "";
    } else if (unit === "\u2069") {
      const isolate = open.findLastIndex((at) => OPENS_ISOLATE.has(units[at]));
      if (isolate < 0) units[index] = "";
      else open.length = isolate;
    }
  });
  for (const index of open) units[index] = "";
  return units.join("");
}

// ISO 4217 currencies whose minor unit is not the hundredth (as services/notifications' money.py has them; a
// test keeps the two equal): the browser's own figures (CLDR's) differ for some (IQD 0, HUF 0), and an amount
// in minor units must be read with ISO's.
const EXPONENTS = {
  BHD: 3,
  BIF: 0,
  CLF: 4,
  CLP: 0,
  DJF: 0,
  GNF: 0,
  IQD: 3,
  ISK: 0,
  JOD: 3,
  JPY: 0,
  KMF: 0,
  KRW: 0,
  KWD: 3,
  LYD: 3,
  OMR: 3,
  PYG: 0,
  RWF: 0,
  TND: 3,
  UGX: 0,
  UYI: 0,
  UYW: 4,
  VND: 0,
  VUV: 0,
  XAF: 0,
  XOF: 0,
  XPF: 0,
};

// An amount in minor units, exactly (BigInt, no float), in the currency's own format.
function money({ amountMinor, currency }) {
  const digits = EXPONENTS[currency] ?? 2;
  const format = new Intl.NumberFormat("en-US", {
    style: "currency",
    currency,
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
  const minor = BigInt(amountMinor ?? 0);
  const magnitude = (minor < 0n ? -minor : minor).toString().padStart(digits + 1, "0");
  const major = digits ? `${magnitude.slice(0, -digits)}.${magnitude.slice(-digits)}` : magnitude;
  return format.format(`${minor < 0n ? "-" : ""}${major}`);
}

function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString("en-US") : "";
}

// ORDER_STATE_CONFIRMED → CONFIRMED.
function enumName(value, prefix) {
  return String(value ?? "").replace(prefix, "");
}

// The class of a right-aligned column of numbers.
const NUMBER = "number";

// A table: its columns ([heading, class]), then its rows.
function table(attributes, columns, rows) {
  const headings = h(
    "tr",
    {},
    columns.map(([heading, kind]) => h("th", { class: kind }, heading)),
  );
  return h("table", attributes, h("thead", {}, headings), h("tbody", {}, rows));
}

function thumb(name) {
  return h("div", { class: "thumb", "aria-hidden": "true" }, (name || "?").charAt(0).toUpperCase());
}

// RetryInfo's retryDelay is a protobuf Duration as JSON writes it ("4.887670792s"), no wait to show a shopper
// as it came: whole seconds, rounded up (sooner would meet the same refusal), one at least ("0 s" reads as "no
// need to wait"). What is no Duration is told as no number at all.
function retryIn(retryDelay) {
  const duration = /^(\d+)(?:\.(\d{1,9}))?s$/.exec(String(retryDelay));
  if (!duration) return "a moment";
  const [, seconds, fraction = ""] = duration;
  return `${Math.max(1, Number(seconds) + (/[1-9]/.test(fraction) ? 1 : 0))} s`;
}

function errorBox(error) {
  const loose = error.violations?.filter((violation) => !violation.shown) ?? [];
  const message = error.fieldRefusal ? (loose.length ? FIX_LISTED : FIX_MARKED) : error.message;
  const box = h("div", { class: "error", role: "alert" }, message);
  if (loose.length) {
    // A field path (`query`, `items[0].quantity`) names a field of the request, no words of the page.
    box.append(
      h(
        "ul",
        {},
        loose.map((violation) => h("li", {}, violation.description)),
      ),
    );
  }
  if (error.retryDelay) box.append(h("p", {}, `You can try again in ${retryIn(error.retryDelay)}.`));
  if (error.retrySafe) {
    box.append(h("p", {}, "It may or may not have gone through: trying again is safe (it is never done twice)."));
  }
  // (Not for NOT_FOUND: the order named is the one that was not found.)
  // Nor for the order whose page this is: a link to it changes no fragment and does nothing.
  const orderId = error.code === NOT_FOUND ? null : error.info?.metadata?.order_id;
  if (orderId && location.hash !== `#/orders/${encodeURIComponent(orderId)}`)
    box.append(h("p", {}, h("a", { href: `#/orders/${encodeURIComponent(orderId)}` }, `Order ${orderId}`)));
  if (error.traceId) box.append(h("p", { class: "muted" }, `Reference: ${error.traceId}`));
  return box;
}

// A page of a list may hold nothing while its nextPageToken goes on (ListOrders leaves out the orders a newer
// release of orders wrote): "none yet" only for an empty page that is the last, or the customer is told the
// list is empty and given no way to the rest of it.
function emptyPage(page, none) {
  return h("p", {}, page.nextPageToken ? "Nothing to show on this page; the next page may have more." : none);
}

function nextPageLink(token, query) {
  if (!token) return null;
  const params = new URLSearchParams({ ...query, pageToken: token });
  return h("p", {}, h("a", { href: `${location.hash.split("?")[0] || "#/"}?${params}` }, "Next page"));
}

// A form of labelled inputs, each named by its field in the request (`shipping_address.city`): the
// server's field violations land beside the input they name. No browser-side checks (novalidate): the
// service's rules are the rules, and its answers say which field broke which.
// A field with `options` ([value, label] pairs) is a <select>, its first option `choose` (value ""): nothing
// is chosen for the shopper, and the service says so beside it when nothing was.
// Inputs outside the form may belong to it (the cart's quantities, `items[0].quantity`, by their `form`
// attribute, with the form's `id`).
// `busy`: what the page says while the form's call is out (a checkout's saga takes seconds).
function fieldsForm(fields, submitLabel, onSubmit, { id: formId, busy = "Sending…" } = {}) {
  const form = h("form", { class: "fields", novalidate: true, id: formId });
  const keptSlot = `${KEPT_FORM}${formId}`;
  const kept = formId ? readJson(sessionStorage, keptSlot, {}) : {};
  if (formId) sessionStorage.removeItem(keptSlot);
  for (const field of fields) {
    const id = `field-${field.name.replaceAll(/[^a-z0-9]/gi, "-")}`;
    const named = { id, name: field.name, autocomplete: field.autocomplete ?? "off" };
    const control = field.options
      ? h(
          "select",
          named,
          h("option", { value: "" }, field.choose),
          field.options.map(([value, label]) => h("option", { value }, label)),
        )
      : h("input", { ...named, type: field.type ?? "text", value: field.value ?? "", inputmode: field.inputmode });
    if (field.keep && typeof kept?.[field.name] === "string") control.value = kept[field.name];
    form.append(
      h(
        "div",
        { class: "field" },
        h("label", { for: id }, field.label),
        control,
        h("span", { class: "problem", id: `${id}-problem` }),
      ),
    );
  }
  const button = h("button", { type: "submit" }, submitLabel);
  // A polite live region, there before it speaks: a disabled button alone said nothing of a 15 s wait.
  const progress = h("span", { class: "progress", role: "status" });
  form.append(h("div", { class: "actions" }, button, progress));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const input of inputsOf(form)) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
      problemOf(input).textContent = "";
    }
    form.querySelector(".error")?.remove();
    const values = Object.fromEntries(new FormData(form));
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    progress.textContent = busy;
    try {
      await onSubmit(values);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.needsSignIn) {
        if (formId) {
          const keep = fields.filter((field) => field.keep).map((field) => [field.name, values[field.name]]);
          sessionStorage.setItem(keptSlot, JSON.stringify(Object.fromEntries(keep)));
        }
        signInAndReturn(SESSION_ENDED);
        return;
      }
      showProblems(form, error);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
      progress.textContent = "";
    }
  });
  return form;
}

// A form's inputs and pickers (of fieldsForm), its button left out.
const inputsOf = (form) => [...form.elements].filter((element) => ["INPUT", "SELECT"].includes(element.tagName));

// A service's complaint about a cart line (`items[0].quantity`), not about a field of the checkout form.
const aboutALine = (violation) => /^items\[\d+\]/.test(violation.field);

// A refused request's answer on the form (of fieldsForm): each field violation beside the input it names, the
// rest in a box below the button.
function showProblems(form, error) {
  const inputs = inputsOf(form);
  for (const violation of error.violations) {
    const input = inputFor(inputs, violation.field);
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", problemOf(input).id);
    problemOf(input).textContent = violation.description;
    violation.shown = true;
  }
  const box = errorBox(error);
  form.querySelector(".actions").after(box);
  // Focus goes to what to fix (the first field refused), else to what was said: left on the button, a
  // keyboard or screen reader user heard nothing of the answer.
  const invalid = inputs.find((input) => input.getAttribute("aria-invalid") === "true");
  if (invalid) invalid.focus();
  else {
    box.tabIndex = -1;
    box.focus();
  }
}

// Where the service's complaint about a request field goes: its input, else the first input of the nearest
// enclosing message it names (`card` → `card.number`; `items[0].product_id` → `items[0].quantity`).
function inputFor(inputs, field) {
  for (let path = field; path; path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "") {
    const found =
      inputs.find((input) => input.name === path) ?? inputs.find((input) => input.name.startsWith(`${path}.`));
    if (found) return found;
  }
  return null;
}

// The element that says what is wrong with an input (`<input id>-problem`).
function problemOf(input) {
  return document.getElementById(`${input.id}-problem`);
}

// ---- Views ----------------------------------------------------------------------------------------------

function productCard(product) {
  const href = `#/products/${encodeURIComponent(product.id)}`;
  return h(
    "li",
    { class: "card" },
    thumb(product.name),
    h("h3", {}, h("a", { href }, product.name)),
    h("div", { class: "price" }, money(product.price)),
    product.category
      ? h("a", { class: "muted", href: `#/?category=${encodeURIComponent(product.category)}` }, product.category)
      : null,
  );
}

async function productsView(query) {
  const searching = Boolean(query.query);
  const page = searching
    ? await api.search({ query: query.query, category: query.category, pageToken: query.pageToken })
    : await api.products({ category: query.category, pageToken: query.pageToken });
  const title = searching ? ["Results for “", isolated(query.query), "”"] : query.category || "All products";
  const products = page.products ?? [];
  return [
    h("h1", {}, title),
    products.length
      ? h("ul", { class: "products", "aria-label": "Products" }, products.map(productCard))
      : emptyPage(page, "Nothing found."),
    nextPageLink(page.nextPageToken, { query: query.query ?? "", category: query.category ?? "" }),
  ];
}

const NOT_WHOLE = "A quantity is a whole number.";
const NEGATIVE = "A quantity cannot be below 0 (0 takes the line out).";

// What is wrong with a cart quantity as typed, or null: a fraction, or a number below 0, which had taken the
// line out of the cart without a word.
function quantityProblem(input) {
  const typed = wholeNumber(input);
  if (typed === null) return NOT_WHOLE;
  return typed < 0 ? NEGATIVE : null;
}

// What a number input holds, as the number it is: NaN when empty, null for a fraction, which no quantity is.
// Not parseInt: the input takes "1e3", which parseInt read as 1, a quantity the shopper never typed.
function wholeNumber(input) {
  const number = input.valueAsNumber;
  return Number.isFinite(number) && !Number.isInteger(number) ? null : number;
}

async function productView(productId) {
  const page = await api.productPage(productId);
  const product = page.product;
  const available = page.availability?.availableQuantity ?? 0;
  const quantity = h("input", { id: "quantity", type: "number", min: 1, max: Math.max(available, 1), value: 1 });
  const added = h("span", { role: "status" });
  // novalidate, as every form (docs/storefront.md): the browser's own check refused 0 or more than in stock
  // with a bubble of its own; the page takes what it can (at least 1) and orders tells what is short.
  const buy = h(
    "form",
    {
      class: "actions",
      novalidate: true,
      onsubmit: (event) => {
        event.preventDefault();
        const typed = wholeNumber(quantity);
        if (typed === null) {
          added.textContent = `${NOT_WHOLE} Nothing was added.`;
          return;
        }
        const count = int32(Math.max(1, Number.isNaN(typed) ? 1 : typed));
        cart.add(product, count);
        added.textContent = `Added ${count} to your cart.`;
      },
    },
    h("label", { for: "quantity" }, "Quantity"),
    quantity,
    h("button", { type: "submit", disabled: !page.availability?.inStock }, "Add to cart"),
    added,
  );
  // Degraded: recommendations did not answer in time, and the gateway filled in products of the same
  // category. The page sells either way.
  const recommended = page.recommendations ?? [];
  const heading = page.recommendationsDegraded ? `More in ${product.category}` : "Customers also bought";
  return [
    h(
      "article",
      { class: "panel" },
      thumb(product.name),
      h("h1", {}, product.name),
      h("p", { class: "price" }, money(product.price)),
      h("a", { class: "muted", href: `#/?category=${encodeURIComponent(product.category)}` }, product.category),
      h("p", {}, product.description),
      page.availability?.inStock
        ? h("p", { class: "in-stock" }, `In stock: ${available}`)
        : h("p", { class: "out-of-stock" }, "Out of stock"),
      buy,
    ),
    recommended.length
      ? h("h2", {}, page.recommendationsDegraded ? ["More in ", isolated(product.category)] : heading)
      : null,
    recommended.length
      ? h(
          "ul",
          { class: "products", "aria-label": heading },
          recommended.map((item) => productCard({ id: item.productId, name: item.name, price: item.price })),
        )
      : null,
  ];
}

// The sum of the lines in each currency the cart holds, in the order of the lines.
function cartTotals(items) {
  const sums = new Map();
  for (const { unitPrice, quantity } of items) {
    const line = BigInt(unitPrice.amountMinor) * BigInt(quantity);
    sums.set(unitPrice.currency, (sums.get(unitPrice.currency) ?? 0n) + line);
  }
  return [...sums].map(([currency, sum]) => ({ amountMinor: sum.toString(), currency }));
}

// The one total an order can be placed for; null for a cart of several currencies (an order takes one).
function cartTotal(items) {
  const totals = cartTotals(items);
  return totals.length === 1 ? totals[0] : null;
}

// The checkout slot an earlier load of the page left (reloaded or restored while "Place order" was out): the
// page never saw its answer, so the order may have been placed. The cart page looks for it before it offers
// to place another, once; `unseenCheckout.key` stays the key of the next attempt (idempotently).
const unseenCheckout = readJson(sessionStorage, CHECKOUT, null);
let unseenChecked = false;
// Orders are stamped by the server's clock, the slot by the browser's: this much apart they still match.
const CLOCK_SKEW_MS = 5 * 60 * 1000;

// What became of the checkout left unseen, said above the cart: the order found in the customer's recent
// orders (its lines then leave the cart, as after a checkout seen through, unless it was cancelled), or that
// none is there yet and that placing it again here is safe.
async function unseenCheckoutNotice(session) {
  const pending = readJson(sessionStorage, CHECKOUT, null);
  if (unseenChecked || !session || pending?.key !== unseenCheckout?.key || !ownSlot(pending, session)) return null;
  unseenChecked = true;
  const [, what] = JSON.parse(pending.fingerprint);
  const lines = (items) => JSON.stringify((items ?? []).map((item) => [item.productId, Number(item.quantity)]).sort());
  let orders = [];
  try {
    ({ orders = [] } = await api.orders({}));
  } catch (error) {
    if (error instanceof ApiError && error.needsSignIn) throw error;
  }
  const placed = orders.find(
    (order) =>
      lines(order.items) === lines(what?.items) && Date.parse(order.createdAt) >= pending.since - CLOCK_SKEW_MS,
  );
  if (!placed) {
    return h(
      "p",
      { class: "notice", role: "status" },
      "An order placed before this page was reloaded may already have gone through, though it is not in your " +
        "orders yet. Placing it again here is safe: it is sent as the same checkout, never ordered or charged twice.",
    );
  }
  sessionStorage.removeItem(CHECKOUT);
  const state = enumName(placed.state, "ORDER_STATE_");
  const went = !["CANCELLED", "FAILED"].includes(state);
  if (went) cart.takeOut(what.items);
  return h(
    "p",
    { class: "notice", role: "status" },
    "The order placed before this page was reloaded went through: ",
    h("a", { href: `#/orders/${encodeURIComponent(placed.id)}` }, `Order ${placed.id}`),
    ` is ${state}.`,
    went ? " Its lines are taken out of your cart; nothing more was ordered." : "",
  );
}

async function cartView() {
  const notice = await unseenCheckoutNotice(currentSession());
  const items = cart.items();
  cartShown = items;
  if (!items.length) return [h("h1", {}, "Your cart"), notice, h("p", {}, "Your cart is empty.")];
  // A quantity changed updates the total in place (the lines' currencies stay what they were). A cart of
  // several currencies has no one total to check out with: it shows each currency's, as no single amount
  // is what the customer would pay.
  const total = cartTotal(items);
  const estimate = h("strong", {});
  const showTotal = () => {
    estimate.textContent = cartTotals(cartShown).map(money).join(" and ");
  };
  showTotal();
  const prices = items.map((item) => h("td", { class: NUMBER }, money(item.unitPrice)));
  // The prices refreshed after a checkout refused for a price change: shown in place, so that what the
  // customer typed into the form stays.
  const showPrices = () => {
    cartShown.forEach((item, index) => {
      if (prices[index]) prices[index].textContent = money(item.unitPrice);
    });
    showTotal();
  };
  const setQuantity = (item, input) => {
    // A change of another tab not heard of yet: this quantity is not set on a cart the page does not show;
    // the page shows that cart first.
    if (!sameCart(cart.items(), cartShown)) {
      cartChangedElsewhere();
      return;
    }
    // Any quantity typed answers the last checkout's refusal kept, a fraction too: kept, a line's refusal came
    // back on the next redraw (another tab's cart change) over the quantity typed since.
    checkout.answer = null;
    const typed = wholeNumber(input);
    const problem = problemOf(input);
    const refused = quantityProblem(input);
    if (refused) {
      // Said beside the quantity, as the services' complaints about a line are; the cart keeps the line's.
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", problem.id);
      problem.textContent = refused;
      return;
    }
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby");
    problem.textContent = "";
    const quantity = int32(Number.isNaN(typed) ? 0 : typed);
    // Shown as the cart now holds it ("1e3" as 1000).
    input.value = String(quantity);
    cart.setQuantity(item.productId, quantity);
    cartShown = cart.items();
    // A line taken out changes the rows; otherwise what was typed into the form stays.
    if (quantity === 0) route();
    else showTotal();
  };
  // Each quantity is the request's `items[i].quantity`: the service's complaint about a line lands on it.
  const rows = items.map((item, index) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/products/${encodeURIComponent(item.productId)}` }, item.name)),
      h(
        "td",
        { class: NUMBER },
        h("input", {
          id: `cart-quantity-${index}`,
          name: `items[${index}].quantity`,
          form: CHECKOUT_FORM,
          type: "number",
          min: 0,
          value: item.quantity,
          "aria-label": `Quantity of ${item.name}`,
          onchange: (event) => setQuantity(item, event.target),
          // Enter in a field of a form submits it (implicit submission), and this field is the checkout
          // form's: Enter placed the order, for a quantity and total the page had not shown. It sets the
          // quantity, as leaving the field does; only "Place order" orders. (Read-only: a checkout is out.)
          onkeydown: (event) => {
            if (event.key !== "Enter") return;
            event.preventDefault();
            if (!event.target.readOnly) setQuantity(item, event.target);
          },
        }),
        h("span", { class: "problem", id: `cart-quantity-${index}-problem` }),
      ),
      prices[index],
    ),
  );
  const session = currentSession();
  return [
    h("h1", {}, "Your cart"),
    notice,
    table({ class: "panel" }, [["Product"], ["Quantity", NUMBER], ["Price", NUMBER]], rows),
    total
      ? h("p", {}, "Total: ", estimate, " (a price changed before you check out is shown to you to confirm first)")
      : h("p", { class: "error" }, "Your cart holds more than one currency; an order takes one. Totals: ", estimate),
    h("h2", {}, "Check out"),
    !total
      ? h("p", {}, "Take out the lines of every currency but one (a quantity of 0) to check out.")
      : session
        ? checkoutForm(total.currency, session, showPrices)
        : h("p", {}, h("a", { href: "#/login?next=%23%2Fcart" }, "Sign in"), " to check out."),
  ];
}

// A country as the page names it wherever it shows one (the checkout's picker, an order's address): in the
// browser's language, or by its code where the browser has no name for it. The order page showed the code
// ("…, GB") beside a picker that had offered the name. Made on first use and never allowed to throw: made at
// the script's top, a browser without Intl.DisplayNames lost the whole page, and a code it rejects as
// malformed (RangeError) would lose the order's page; either way the code itself names the country.
let countryNames;
function countryName(code) {
  try {
    countryNames ??= new Intl.DisplayNames(undefined, { type: "region", fallback: "code" });
    return countryNames.of(code);
  } catch {
    return code;
  }
}

// The countries orders ships to (countries.js: its own list of ISO 3166-1 codes), as [code, name] in the order
// of their names. Typed as text, the country was refused unless the shopper knew its code ("UK" is not the
// United Kingdom's).
function countryOptions() {
  return COUNTRIES.map((code) => [code, countryName(code)]).sort(([, one], [, other]) => one.localeCompare(other));
}

function checkoutForm(currency, session, showPrices) {
  const fields = [
    { name: "shipping_address.full_name", label: "Full name", autocomplete: "name", keep: true },
    { name: "shipping_address.street", label: "Street", autocomplete: "street-address", keep: true },
    { name: "shipping_address.city", label: "City", autocomplete: "address-level2", keep: true },
    { name: "shipping_address.postal_code", label: "Postal code", autocomplete: "postal-code", keep: true },
    {
      name: "shipping_address.country",
      keep: true,
      label: "Country",
      autocomplete: "country",
      choose: "Choose a country",
      options: countryOptions(),
    },
    { name: "card.number", label: "Card number", inputmode: "numeric", autocomplete: "cc-number" },
    { name: "card.exp_month", label: "Expiry month", inputmode: "numeric", autocomplete: "cc-exp-month" },
    { name: "card.exp_year", label: "Expiry year (four digits)", inputmode: "numeric", autocomplete: "cc-exp-year" },
    { name: "card.cvv", label: "CVV", inputmode: "numeric", autocomplete: "cc-csc" },
  ];
  const submit = async (values) => {
    // A fraction left in a quantity (refused as it was typed; "Place order" refuses it again) is not what the
    // cart holds: ordered, the cart's quantity went out while the field showed another. Nothing is sent, and the
    // field is marked again, as the refusal of the press cleared it. Putting the cart's quantity back into the
    // field instead would order, on the same press, a quantity the shopper had just typed over.
    const fractions = [...document.querySelectorAll(`input[form="${CHECKOUT_FORM}"]`)].filter(quantityProblem);
    if (fractions.length) {
      const fieldViolations = fractions.map((input) => ({ field: input.name, description: quantityProblem(input) }));
      // 400, as a refusal of the request would be: 0 is an outcome unknown, and this one is known (nothing sent).
      throw new ApiError(400, {
        code: INVALID_ARGUMENT,
        message: "Nothing was ordered: a quantity in your cart is not one the cart can hold.",
        details: [{ "@type": BAD_REQUEST, fieldViolations }],
      });
    }
    // The cart the page shows is the one ordered, at the total it shows: a cart another tab changed since
    // (its `storage` event not heard yet) is shown first, and nothing is sent. After an unknown outcome the
    // page shows the cart that was ordered, whatever the cart is now: placing it again is the same request.
    const items = cartShown;
    checkout.answer = null;
    if (!checkout.unknown && !sameCart(cart.items(), items)) {
      await showCartChanged(CHANGED_BEFORE_ORDER);
      return;
    }
    const whole = (text) => (/^\d+$/.test(text.trim()) ? int32(Number(text)) : 0);
    const card = {
      number: values["card.number"].replaceAll(/\s/g, ""),
      expMonth: whole(values["card.exp_month"]),
      expYear: whole(values["card.exp_year"]),
      cvv: values["card.cvv"],
    };
    const order = {
      items: items.map((item) => ({ productId: item.productId, quantity: item.quantity })),
      currency,
      // The total the cart shows is the one the customer agrees to: orders refuses the order (PRICE_CHANGED)
      // rather than charge another.
      expectedTotal: cartTotal(items),
      // No e-mail: the order's e-mails go to the account's own address, the only one the gateway takes.
      shippingAddress: {
        fullName: values["shipping_address.full_name"],
        street: values["shipping_address.street"],
        city: values["shipping_address.city"],
        postalCode: values["shipping_address.postal_code"],
        country: values["shipping_address.country"],
      },
    };
    // The same order to the same card is the same checkout; the card's number and CVV are not kept for it.
    const what = { ...order, card: { last4: card.number.slice(-4), expMonth: card.expMonth, expYear: card.expYear } };
    // The lines being ordered are not changed here meanwhile (the button is disabled; so are they).
    const quantities = [...document.querySelectorAll(`input[form="${CHECKOUT_FORM}"]`)];
    const hold = (held) => quantities.forEach((input) => (input.readOnly = held));
    checkout.out = true;
    checkout.unknown = false;
    hold(true);
    let answer;
    try {
      answer = await idempotently(CHECKOUT, what, (key) => api.placeOrder({ ...order, card }, key));
    } catch (error) {
      const priceChanged = error instanceof ApiError && error.info?.reason === "PRICE_CHANGED";
      if (priceChanged) await refreshPrices(error, order.expectedTotal);
      // The page that placed the order may be gone (the customer went elsewhere meanwhile): there is no cart
      // shown to put the prices on, and none to hold for a retry.
      const onThisPage = cartShown === items;
      if (priceChanged && onThisPage) {
        // Only the prices are new, shown in place; lines another tab changed meanwhile need the whole page.
        const refreshed = cart.items();
        const lines = (cartItems) => JSON.stringify(cartItems.map((item) => [item.productId, item.quantity]));
        if (lines(refreshed) !== lines(items)) {
          await showCartChanged(CHANGED_BEFORE_ORDER);
          return;
        }
        cartShown = refreshed;
        showPrices();
      }
      const failure = withLineProblems(error, order.items);
      if (failure instanceof ApiError && failure.info?.reason === KEY_REUSED) {
        // The key carried over a reload (idempotently) already placed an order, of the request as it was then.
        failure.message =
          "The order placed before this page was reloaded went through, as it was then: see Your orders. " +
          "Nothing more was ordered or charged.";
      }
      checkout.unknown = onThisPage && failure instanceof ApiError && Boolean(failure.retrySafe);
      // Kept for a redraw is what another tab's change leaves true: the order's refusal or cancellation (its
      // link) and the complaints about lines, put on the lines as then shown. Not a complaint about a field of
      // the form, which the shopper may have corrected since (the redraw marked it again and took the focus),
      // nor a PRICE_CHANGED, whose total was that of the cart before the change.
      const lineViolations = failure instanceof ApiError ? failure.violations.filter(aboutALine) : [];
      const aboutTheOrder = failure instanceof ApiError && Boolean(failure.info?.metadata?.order_id);
      if (onThisPage && !checkout.unknown && !failure.needsSignIn && (aboutTheOrder || lineViolations.length)) {
        // (A copy of its violations: showing them marks them shown.)
        const violations = lineViolations.map((violation) => ({ ...violation }));
        checkout.answer = { error: failure, violations, items: order.items };
      }
      if (checkout.unknown) {
        if (checkout.redrawDue) flash(CHANGED_WHILE_UNKNOWN);
        throw failure;
      }
      // The redraw held while the request was out, with its answer (signing in again leaves the page anyway).
      if (
        checkout.redrawDue &&
        cartShown &&
        !sameCart(cart.items(), cartShown) &&
        failure instanceof ApiError &&
        !failure.needsSignIn
      ) {
        await showCartChanged(CHANGED_ELSEWHERE);
        return;
      }
      throw failure;
    } finally {
      checkout.out = false;
      // The lines of an order whose outcome is unknown stay as they were ordered, for placing it again.
      if (!checkout.unknown) {
        checkout.redrawDue = false;
        hold(false);
      }
    }
    cart.takeOut(order.items);
    flash(`Thank you! Order ${answer.order.id} is ${enumName(answer.order.state, "ORDER_STATE_")}.`, {
      acrossNavigation: true,
    });
    location.hash = `#/orders/${encodeURIComponent(answer.order.id)}`;
  };
  const form = fieldsForm(fields, "Place order", submit, { id: CHECKOUT_FORM, busy: "Placing your order…" });
  // An edit answers the refusal kept for a redraw (a quantity set does too, in setQuantity).
  form.addEventListener("input", () => {
    checkout.answer = null;
  });
  form.prepend(h("p", {}, "The order's e-mails go to your account's address, ", session.email, "."));
  return form;
}

// A checkout refused because prices changed since they were put in the cart: the cart takes the current
// prices, and the customer is told the new total and asked to place the order again, which confirms it
// (nothing was ordered, reserved or charged). Failing to fetch a price leaves that line as it was: the total
// orders named is told all the same, and a checkout at the old total is refused again.
async function refreshPrices(error, shown) {
  const pages = await Promise.allSettled(cart.items().map((item) => api.productPage(item.productId)));
  const current = new Map(
    pages.filter((page) => page.status === "fulfilled").map(({ value }) => [value.product.id, value.product]),
  );
  cart.save(
    cart.items().map((item) => {
      const product = current.get(item.productId);
      return product ? { ...item, name: product.name, unitPrice: product.price } : item;
    }),
  );
  const refreshed = cartTotal(cart.items());
  const named = error.info.metadata ?? {};
  const now =
    named.current_total_minor && named.currency
      ? { amountMinor: named.current_total_minor, currency: named.currency }
      : refreshed;
  error.message =
    `The prices changed since you put them in your cart: the total is now ${money(now)}, not ${money(shown)}. ` +
    "Nothing was ordered or charged. Check the prices above, then place the order again to pay the new total.";
}

// The services' complaints about the lines ordered (`items[1].quantity`), put on those lines as the cart page
// now shows them: another tab may have moved them, or taken them out (then the complaint names the product).
function onLinesShown(error, ordered) {
  const shownAt = new Map(cart.items().map((item, index) => [item.productId, index]));
  error.violations = error.violations.map((violation) => {
    const [, index, rest] = /^items\[(\d+)\](.*)$/.exec(violation.field) ?? [];
    const line = index === undefined ? null : ordered[Number(index)];
    if (!line) return violation;
    const at = shownAt.get(line.productId);
    return { ...violation, field: at === undefined ? line.productId : `items[${at}]${rest}` };
  });
  return error;
}

// What is wrong with the lines an ErrorInfo names by product id, by its reason (a Map: a reason is the
// server's text, and an object's lookup would find "constructor" too).
const LINE_PROBLEMS = new Map([
  ["PRODUCT_NOT_FOUND", "no longer sold: take it out of your cart"],
  ["INSUFFICIENT_STOCK", "not enough in stock"],
]);

// PRODUCT_NOT_FOUND and INSUFFICIENT_STOCK name the products by id (ErrorInfo metadata `product_ids`,
// comma-separated), not as field violations: each becomes one on its cart line, so the shopper sees which
// line to take out or lower, by its name.
function withLineProblems(error, items) {
  const description = error instanceof ApiError ? LINE_PROBLEMS.get(error.info?.reason) : undefined;
  if (!description) return error;
  const named = new Set(String(error.info.metadata?.product_ids ?? "").split(","));
  error.violations = [
    ...error.violations,
    ...items.flatMap((item, index) =>
      named.has(item.productId) ? [{ field: `items[${index}].product_id`, description }] : [],
    ),
  ];
  return error;
}

// An order's or a notification's state (ORDER_STATE_CONFIRMED → CONFIRMED), coloured by what it is.
function stateBadge(value, prefix) {
  const state = enumName(value, prefix);
  return h("span", { class: `state state-${state}` }, state);
}

const CANCELLING = "cancellation in progress";

// An order's state, and that its cancellation is under way: orders accepted it, but the refund or the
// release waits for payments or inventory, and the order reads CONFIRMED until they are done.
function orderState(order) {
  const badge = stateBadge(order.state, "ORDER_STATE_");
  return order.pendingCancellation ? [badge, " ", h("span", { class: "state state-CANCELLING" }, CANCELLING)] : badge;
}

// CancelOrder's UNAVAILABLE naming the order: the cancellation is accepted and completes on its own (any
// other UNAVAILABLE may not have recorded it).
function cancellationAccepted(error, orderId) {
  return error instanceof ApiError && error.code === UNAVAILABLE && error.info?.metadata?.order_id === orderId;
}

async function ordersView(query) {
  const page = await api.orders({ pageToken: query.pageToken });
  const orders = page.orders ?? [];
  return [
    h("h1", {}, "Your orders"),
    orders.length ? ordersTable(orders) : emptyPage(page, "No orders yet."),
    nextPageLink(page.nextPageToken, {}),
  ];
}

function ordersTable(orders) {
  return table(
    { class: "panel" },
    [["Order"], ["Placed"], ["State"], ["Total", NUMBER]],
    orders.map((order) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/orders/${encodeURIComponent(order.id)}` }, order.id)),
        h("td", {}, when(order.createdAt)),
        h("td", {}, orderState(order)),
        h("td", { class: NUMBER }, money(order.total)),
      ),
    ),
  );
}

async function orderView(orderId) {
  const { order } = await api.order(orderId);
  const state = enumName(order.state, "ORDER_STATE_");
  const address = order.shippingAddress ?? {};
  const cancel =
    state === "CONFIRMED" && !order.pendingCancellation
      ? fieldsForm(
          [],
          "Cancel order",
          async () => {
            // One key per order until a settled answer: a retry after UNAVAILABLE (the refund could not be
            // done yet) must carry the same key, or orders answers that the order is already being cancelled.
            try {
              await idempotently(`${CANCEL}${order.id}`, order.id, (key) => api.cancelOrder(order.id, key));
            } catch (error) {
              if (error instanceof ApiError && error.code === FAILED_PRECONDITION && !error.needsSignIn) {
                // Cancelled, or being cancelled, since this page was drawn (another tab, another device): the
                // page shows the order as it now is, not a refusal beside a state and a button that are stale.
                const cancelled = error.info?.metadata?.state === "ORDER_STATE_CANCELLED";
                flash(
                  cancelled
                    ? `Order ${order.id} was already cancelled; it is shown below as it now is.`
                    : `Order ${order.id} cannot be cancelled now; it is shown below as it now is.`,
                );
                redraw();
                return;
              }
              if (!cancellationAccepted(error, order.id)) throw error;
              flash(`Cancellation of order ${order.id} accepted; it completes on its own and the payment is refunded.`);
              redraw();
              return;
            }
            flash(`Order ${order.id} is being cancelled; the payment is refunded.`);
            redraw();
          },
          { busy: "Cancelling the order…" },
        )
      : null;
  return [
    h("h1", {}, `Order ${order.id}`),
    h(
      "section",
      { class: "panel" },
      h("p", {}, "State: ", orderState(order)),
      order.cancelReason?.message ? h("p", { class: "muted" }, order.cancelReason.message) : null,
      order.pendingCancellation
        ? h(
            "p",
            { class: "muted" },
            "Your cancellation is accepted and completes on its own: the payment is refunded and the order " +
              "shows CANCELLED once it is done.",
          )
        : null,
      h("p", {}, `Placed ${when(order.createdAt)}, updated ${when(order.updatedAt)}`),
      h(
        "p",
        {},
        "Ships to ",
        [
          address.fullName,
          address.street,
          address.city,
          address.postalCode,
          address.country && countryName(address.country),
        ]
          .filter(Boolean)
          .flatMap((part, index) => [index ? ", " : "", isolated(part)]),
      ),
      table(
        {},
        [["Product"], ["Quantity", NUMBER], ["Line total", NUMBER]],
        (order.items ?? []).map((item) =>
          h(
            "tr",
            {},
            h("td", {}, item.productName),
            h("td", { class: NUMBER }, String(item.quantity)),
            h("td", { class: NUMBER }, money(item.lineTotal)),
          ),
        ),
      ),
      h("p", {}, "Total: ", h("strong", {}, money(order.total))),
      cancel,
    ),
  ];
}

async function notificationsView(query) {
  const page = await api.notifications({ pageToken: query.pageToken });
  const notifications = page.notifications ?? [];
  return [
    h("h1", {}, "Notifications"),
    notifications.length
      ? h(
          "ul",
          { class: "panel", "aria-label": "Notifications" },
          notifications.map((item) =>
            h(
              "li",
              {},
              h("strong", {}, item.subject),
              ` to ${item.recipient} — `,
              stateBadge(item.state, "NOTIFICATION_STATE_"),
              item.orderId
                ? [" (", h("a", { href: `#/orders/${encodeURIComponent(item.orderId)}` }, item.orderId), ")"]
                : null,
            ),
          ),
        )
      : emptyPage(page, "No notifications yet: an order's e-mail appears here once it is sent."),
    nextPageLink(page.nextPageToken, {}),
  ];
}

function loginView(query) {
  const next = query.next || "#/";
  return [
    h("h1", {}, "Sign in"),
    fieldsForm(
      [
        { name: "email", label: "E-mail", type: "email", autocomplete: "username" },
        { name: "password", label: "Password", type: "password", autocomplete: "current-password" },
      ],
      "Sign in",
      async (values) => {
        const login = await api.login({ email: values.email, password: values.password });
        startSession(login, values.email);
        showSession();
        location.hash = next;
      },
      { busy: "Signing in…" },
    ),
    h("p", {}, "New here? ", h("a", { href: "#/register" }, "Create an account"), "."),
  ];
}

function registerView() {
  return [
    h("h1", {}, "Create an account"),
    fieldsForm(
      [
        { name: "display_name", label: "Name", autocomplete: "name" },
        { name: "email", label: "E-mail", type: "email", autocomplete: "username" },
        { name: "password", label: "Password", type: "password", autocomplete: "new-password" },
      ],
      "Create account",
      async (values) => {
        const credentials = { email: values.email, password: values.password };
        let login = null;
        let greeting;
        try {
          const { user } = await api.register({ ...credentials, displayName: values.display_name });
          greeting = ["Welcome, ", isolated(user?.displayName || values.display_name), "!"];
        } catch (error) {
          // Registered by an earlier try whose sign-in then failed: signing in is what is left to do (with
          // another password, the account is someone else's, as the first answer said).
          if (!(error instanceof ApiError && error.code === ALREADY_EXISTS)) throw error;
          login = await api.login(credentials).catch(() => Promise.reject(error));
          // The account is the one made before, under the name given then, which the public API does not
          // tell: greeted by the name typed now ("Welcome, Other!"), the shopper took it for a new account.
          greeting = "This address already had an account, with this password: you are signed in to it.";
        }
        login ??= await api.login(credentials);
        startSession(login, values.email);
        showSession();
        flash(greeting, { acrossNavigation: true });
        location.hash = "#/";
      },
      { busy: "Creating your account…" },
    ),
  ];
}

// ---- Routing --------------------------------------------------------------------------------------------

// #/path?query → the view (given the path's parts, decoded, and the query), and whether it needs a session.
const ROUTES = [
  { pattern: /^\/$/, view: (_, query) => productsView(query) },
  { pattern: /^\/products\/([^/]+)$/, view: ([, id]) => productView(id) },
  { pattern: /^\/cart$/, view: () => cartView() },
  { pattern: /^\/orders$/, view: (_, query) => ordersView(query), needsSession: true },
  { pattern: /^\/orders\/([^/]+)$/, view: ([, id]) => orderView(id), needsSession: true },
  { pattern: /^\/notifications$/, view: (_, query) => notificationsView(query), needsSession: true },
  { pattern: /^\/login$/, view: (_, query) => loginView(query) },
  { pattern: /^\/register$/, view: () => registerView() },
];

let shown = 0;
// The page shown next was navigated to (not redrawn in place): focus goes to its heading.
let headingDue = false;

// The page drawn anew after a button changed it (the order cancelled): focus goes to its heading, as after a
// link. The button is gone with the old page, and focus with it, to the document's body.
function redraw() {
  headingDue = true;
  return route();
}

// A page for what does not exist (no route, or the product or order the API did not find), with the API's
// answer if there was one.
function notFound(answer = null) {
  return [h("h1", {}, "Not found"), answer, h("p", {}, h("a", { href: "#/" }, "Back to the shop"))];
}

// A page the API's answer did not let be shown (the shop unavailable, a search refused as too long): a heading
// as every page has, for focus to go to and the document's title to name, then why.
function errorPage(error) {
  return [h("h1", {}, "This page could not be shown"), errorBox(error)];
}

// To the sign-in page, which comes back here once signed in. It takes the place of this page in the history:
// a new entry led Back to the page that asks to sign in, which came forward again, so Back never left.
// `why`: said on the sign-in page (a session that ended under a page or a form, not one never started).
function signInAndReturn(why = null) {
  if (why) flash(why, { acrossNavigation: true });
  location.replace(`#/login?next=${encodeURIComponent(location.hash || "#/")}`);
}

// A path's parts decoded, or null for a malformed one (`%E0%A4%A`) or a dot segment: `.` and `..` (`%2e`)
// as an id are path steps in the API's URL (/v1/products/.. is /v1/), another call than the one meant.
function decoded(match) {
  try {
    const parts = match.map((part) => decodeURIComponent(part));
    return parts.slice(1).some((part) => part === "." || part === "..") ? null : parts;
  } catch {
    return null;
  }
}

async function route() {
  // The token may have expired since the last page: the header says so.
  showSession();
  const [path, search = ""] = (location.hash.slice(1) || "/").split("?");
  const query = Object.fromEntries(new URLSearchParams(search));
  const view = document.getElementById("view");
  const found = ROUTES.find((candidate) => candidate.pattern.test(path));
  const parts = found ? decoded(found.pattern.exec(path)) : null;
  const mine = ++shown;
  cartShown = null;
  // Whatever was held for the page left is not for the one shown now.
  checkout.unknown = false;
  checkout.redrawDue = false;
  checkout.answer = null;
  let content;
  if (!parts) {
    content = notFound();
  } else if (found.needsSession && !currentSession()) {
    signInAndReturn();
    return;
  } else {
    view.setAttribute("aria-busy", "true");
    try {
      content = await found.view(parts, query);
    } catch (error) {
      if (!(error instanceof ApiError)) {
        // A fault of the page's own: said as one (the script error is still reported), not a page left
        // busy for good, which assistive technology announces as loading.
        if (mine === shown) {
          view.removeAttribute("aria-busy");
          view.replaceChildren(...errorPage(new ApiError(0, { code: UNKNOWN, message: "Something went wrong." })));
        }
        throw error;
      }
      if (mine !== shown) return;
      if (error.needsSignIn) {
        signInAndReturn(SESSION_ENDED);
        return;
      }
      if (error.info?.reason === INVALID_PAGE_TOKEN && query.pageToken) {
        // The paging contract's answer to a token the services refuse (one from before a release, another
        // user's, cut short): start again from the first page. A shop shows that page, saying so, in place of
        // an error with no way on; replace(), so that Back does not lead to the refused page again.
        const params = new URLSearchParams(search);
        params.delete("pageToken");
        flash("That page can no longer be shown: here is the first page.", { acrossNavigation: true });
        const rest = params.toString();
        location.replace(`#${path}${rest ? `?${rest}` : ""}`);
        return;
      }
      content = error.code === NOT_FOUND ? notFound(errorBox(error)) : errorPage(error);
    }
  }
  // An older navigation that answers late does not overwrite a newer one.
  if (mine !== shown) return;
  view.removeAttribute("aria-busy");
  view.replaceChildren(...[content].flat().filter(Boolean));
  if (headingDue) {
    // Focus had stayed on the link followed, gone with the old page: the next Tab started over at the top,
    // and a screen reader said nothing of the new page.
    headingDue = false;
    const heading = view.querySelector("h1");
    if (heading) {
      heading.tabIndex = -1;
      heading.focus();
    }
  }
  // The title is one string: the heading (a product's name, a query) in isolate characters, as <bdi> would be,
  // and without its unpaired controls, as in a <bdi> (a lone U+2069 would close the isolate early).
  document.title = `\u2068${pairedControls(view.querySelector("h1")?.textContent ?? "Shop")}\u2069 · shopmesh`;
  document.getElementById("search-query").value = query.query ?? "";
}

let keepFlash = false;

// A message above the page (text, or text and elements); `acrossNavigation`: said before going to the page
// it is about.
function flash(message, { acrossNavigation = false } = {}) {
  document.getElementById("flash").replaceChildren(...[message].flat());
  keepFlash = acrossNavigation;
}

let sessionEnds = null;

// The header says who is signed in, until the token expires: then at once, not at the next page.
function showSession() {
  const session = currentSession();
  document.body.classList.toggle("is-signed-in", Boolean(session));
  document.getElementById("who").textContent = session?.email ?? "";
  clearTimeout(sessionEnds);
  if (session) {
    // setTimeout takes at most 2^31 - 1 ms (~24.8 days); a later end is looked at again then.
    const left = Math.min(Date.parse(session.expiresAt) - Date.now() + 50, 2 ** 31 - 1);
    sessionEnds = setTimeout(showSession, Math.max(left, 0));
  }
}

function showCartSize() {
  const count = cart.items().reduce((total, item) => total + item.quantity, 0);
  document.getElementById("cart-link").textContent = count ? `Cart (${count})` : "Cart";
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = document.getElementById("search-query").value.trim();
  location.hash = query ? `#/?${new URLSearchParams({ query })}` : "#/";
});
// Signing out leaves nothing of the shopper's in a shared browser: the token, the kept keys of checkouts and
// cancellations, and the cart, which the next person at this browser would see and could order; in every
// tab, as the other tabs hold copies of the session (SIGNED_OUT). (A session that merely expired keeps them:
// signing in again sends the same checkout with the same key.)
// The token ends on the server too (SignOut: a copy of it, taken before, is refused from now on). The call takes
// the token as it starts, before the page forgets it; the page forgets it at once, not after the answer, and
// whatever the answer: a shop that cannot be reached must not keep a shopper signed in at a shared computer.
function signOut() {
  if (currentSession()) api.signOut().catch(() => {});
  forgetSession();
  localStorage.setItem(SIGNED_OUT, String(Date.now()));
  localStorage.removeItem(CART);
  showCartSize();
  endSession();
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  // On the products page already, no fragment changes (no hashchange): it is shown anew all the same, or
  // focus stayed on the button hidden with the session, which is the document's body.
  if (location.hash === "#/") navigated();
  else location.hash = "#/";
});

function navigated() {
  // A message belongs to the page it was said on, or to the one it led to.
  if (keepFlash) keepFlash = false;
  else flash("");
  headingDue = true;
  route();
}

window.addEventListener("hashchange", navigated);
// Another tab changed the cart (`key` null: it cleared the storage). The cart page shows it as it now is: what
// it shows is what its checkout orders.
window.addEventListener("storage", (event) => {
  if (event.storageArea !== localStorage) return;
  if (event.key === SIGNED_OUT) {
    // Another tab signed out: this one's session, its pending checkout's key with it, ends now, and a page
    // of the shopper's (orders, the checkout form) is not left showing.
    forgetSession();
    showSession();
    route();
    return;
  }
  if (event.key !== CART && event.key !== null) return;
  showCartSize();
  if (cartShown && !sameCart(cart.items(), cartShown)) cartChangedElsewhere();
});

showSession();
showCartSize();
route();
