'use strict';
// minicloud Node.js runtime: a client of the AWS Lambda Runtime API.
//
// The invoker runs this as `node bootstrap.js` (cwd = a per-instance dir), with
// AWS_LAMBDA_RUNTIME_API, _HANDLER, LAMBDA_TASK_ROOT and the AWS_LAMBDA_*
// variables set. It loads the handler once, then loops forever:
// GET invocation/next -> handler(event, context[, callback]) -> POST response or error.

const net = require('net');
const fs = require('fs');
const path = require('path');

const RUNTIME = '/2018-06-01/runtime';
const env = process.env;
const [apiHost, apiPort] = splitHostPort(env.AWS_LAMBDA_RUNTIME_API || '');

function splitHostPort(address) {
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  return [host, Number(address.slice(colon + 1))];
}

// --- Runtime API client -------------------------------------------------------

// One kept-alive HTTP/1.1 connection to the Runtime API (the invoker's own server:
// answers carry Content-Length or are chunked), spoken over `net` directly: loading
// `http` (its parser, agent and outgoing-message machinery) costs every cold start
// ~2.5 ms, about as much as the rest of this file. Like an http.Agent's idle
// socket, the connection is unref'd between requests, so 'beforeExit' still fires
// when a handler's own work has drained. No timeout: GET next is a long poll that
// may wait indefinitely.
const MAX_HEAD = 65536;
let socket = null;
// What the server sent and was not consumed yet: `buffered` joined, `arrived` not
// yet (joined only once `need` bytes are here, so a 6 MB event arriving in 64 KB
// pieces is copied once, not once per piece).
let buffered = Buffer.alloc(0);
let arrived = [];
let received = 0;
let need = 0;
let pending = null; // { resolve, reject, reused } of the request in flight

function forgetBuffered() {
  buffered = Buffer.alloc(0);
  arrived = [];
  received = 0;
  need = 0;
}

function dropSocket(err) {
  const current = socket;
  socket = null;
  forgetBuffered();
  if (current) current.destroy();
  if (pending) {
    const { reject, reused } = pending;
    pending = null;
    const error = err || Object.assign(new Error('the Runtime API closed the connection'), { code: 'ECONNRESET' });
    error.reusedSocket = reused;
    reject(error);
  }
}

function connect() {
  const s = net.createConnection({ host: apiHost, port: apiPort, noDelay: true });
  s.on('data', (chunk) => {
    arrived.push(chunk);
    received += chunk.length;
    if (received >= need) parseResponse(false);
  });
  s.on('end', () => parseResponse(true));
  s.on('error', (err) => { if (socket === s) dropSocket(err); });
  s.on('close', () => { if (socket === s) dropSocket(); });
  return s;
}

// Resolves the request in flight once `buffered` holds its whole answer; `ended`:
// the server has closed its side (a body without a length ends there).
function parseResponse(ended) {
  if (!pending) return;
  if (arrived.length) {
    buffered = buffered.length || arrived.length > 1 ? Buffer.concat([buffered, ...arrived]) : arrived[0];
    arrived = [];
  }
  // Not there yet: parse again once `bytes` have arrived (or the server closes).
  const wait = (bytes) => {
    if (ended) return dropSocket();
    need = bytes;
  };
  const headEnd = buffered.indexOf('\r\n\r\n');
  if (headEnd < 0) {
    if (buffered.length > MAX_HEAD) return dropSocket(new Error("an answer's head is too long"));
    return wait(buffered.length + 1);
  }
  const lines = buffered.toString('latin1', 0, headEnd).split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
  if (!status) return dropSocket(new Error(`not an HTTP/1.x status line: ${JSON.stringify(lines[0].slice(0, 100))}`));
  const headers = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return dropSocket(new Error(`malformed header line: ${JSON.stringify(line.slice(0, 100))}`));
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  let at = headEnd + 4;
  let body;
  if ((headers['transfer-encoding'] || '').toLowerCase() === 'chunked') {
    const chunks = [];
    for (;;) {
      const lineEnd = buffered.indexOf('\r\n', at);
      if (lineEnd < 0) return wait(buffered.length + 1);
      const size = parseInt(buffered.toString('latin1', at, lineEnd).split(';')[0], 16);
      if (Number.isNaN(size)) return dropSocket(new Error('malformed chunk size'));
      if (size === 0) {
        // The last chunk, then trailers (if any) up to an empty line.
        const end = buffered.indexOf('\r\n\r\n', lineEnd);
        if (end < 0) return wait(buffered.length + 1);
        at = end + 4;
        break;
      }
      if (buffered.length < lineEnd + 2 + size + 2) return wait(lineEnd + 2 + size + 2);
      chunks.push(buffered.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(chunks);
  } else if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    if (!Number.isSafeInteger(length) || length < 0) return dropSocket(new Error('malformed Content-Length'));
    if (buffered.length < at + length) return wait(at + length);
    body = buffered.subarray(at, at + length);
    at += length;
  } else if (Number(status[1]) === 204 || Number(status[1]) === 304 || status[1][0] === '1') {
    body = Buffer.alloc(0);
  } else {
    // No length: the body runs to the end of the connection.
    if (!ended) return wait(Infinity);
    body = buffered.subarray(at);
    at = buffered.length;
  }
  // Copied out: the rest of `buffered` must not pin a large event's buffer.
  body = Buffer.from(body);
  buffered = buffered.subarray(at);
  received = buffered.length;
  need = 0;
  const { resolve } = pending;
  pending = null;
  if (ended || (headers.connection || '').toLowerCase() === 'close') {
    const current = socket;
    socket = null;
    forgetBuffered();
    if (current) current.destroy();
  } else if (socket) {
    socket.unref();
  }
  resolve({ status: Number(status[1]), headers, body });
}

function requestOnce(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    const reused = socket !== null;
    if (!socket) socket = connect();
    socket.ref();
    pending = { resolve, reject, reused };
    let head = `${method} ${urlPath} HTTP/1.1\r\nHost: ${env.AWS_LAMBDA_RUNTIME_API}\r\nContent-Length: ${body ? body.length : 0}\r\n`;
    for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`;
    const message = Buffer.from(head + '\r\n', 'latin1');
    socket.write(body && body.length ? Buffer.concat([message, body]) : message);
  });
}

async function request(method, urlPath, body, headers = {}) {
  // The path carries the request id the Runtime API handed out; header values are
  // ours or made safe (postError): nothing may end a line early.
  if (/[^\x21-\x7e]/.test(urlPath)) throw new Error(`unusable request path ${JSON.stringify(urlPath.slice(0, 200))}`);
  for (const value of Object.values(headers)) {
    if (/[\r\n]/.test(String(value))) throw new Error('a header value with a line break');
  }
  try {
    return await requestOnce(method, urlPath, body, headers);
  } catch (err) {
    // A kept-alive socket the server closed while idle only fails on reuse;
    // retry once on a fresh one. A fresh socket failing (e.g. refused) is fatal.
    if (err.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
      return requestOnce(method, urlPath, body, headers);
    }
    throw err;
  }
}

async function post(urlPath, payload, headers = {}) {
  const body = Buffer.from(payload, 'utf8');
  // An explicit Content-Length keeps Node from switching to chunked encoding.
  const res = await request('POST', urlPath, body, {
    'Content-Type': 'application/json',
    'Content-Length': body.length,
    ...headers,
  });
  if (res.status < 200 || res.status > 299) {
    // E.g. 413 for an oversized response: the invoker has already failed the
    // invocation, so log and carry on with the next one.
    console.error(`bootstrap: POST ${urlPath} -> ${res.status}: ${res.body.toString().slice(0, 200)}`);
  }
}

function postError(urlPath, error) {
  // Error types come from user code; Node rejects control characters in headers.
  const headerType = String(error.errorType).replace(/[^\x21-\x7e]/g, '') || 'Unknown';
  return post(urlPath, JSON.stringify(error), { 'Lambda-Runtime-Function-Error-Type': headerType });
}

// --- Errors -------------------------------------------------------------------

// The error body AWS's Node runtime builds (AWS calls the trace "trace"; the
// minicloud contract uses "stackTrace" like the Python runtime).
function toErrorBody(err, errorType) {
  try {
    if (err instanceof Error || (err && typeof err.message === 'string' && 'stack' in err)) {
      return {
        errorType: errorType || err.name || 'Error',
        errorMessage: String(err.message),
        stackTrace: String(err.stack || '').split('\n'),
      };
    }
    return { errorType: errorType || typeof err, errorMessage: String(err), stackTrace: [] };
  } catch (_) {
    // A throwing getter or toString: still report something.
    return { errorType: errorType || 'Error', errorMessage: 'the thrown value could not be inspected', stackTrace: [] };
  }
}

function logError(error) {
  console.error(`[ERROR] ${error.errorType}: ${error.errorMessage}\n${error.stackTrace.join('\n')}`);
}

class InitError extends Error {
  constructor(errorType, message, cause) {
    super(message);
    this.errorType = errorType;
    this.trace = cause && cause.stack ? String(cause.stack).split('\n') : [];
  }
}

// --- Handler loading ----------------------------------------------------------

// "dir/file.fn" names export `fn` of dir/file.{js,mjs,cjs} under the task root
// (falling back to a package `file` in node_modules); like AWS, the export may be
// a dotted path ("file.obj.fn").
async function loadHandler(taskRoot, spec) {
  const slash = spec.lastIndexOf('/');
  const dir = spec.slice(0, slash + 1);
  const rest = spec.slice(slash + 1);
  const dot = rest.indexOf('.');
  if (dot <= 0 || dot === rest.length - 1) {
    throw new InitError('Runtime.MalformedHandlerName', `Bad handler '${spec}': expected 'file.function'`);
  }
  const moduleName = rest.slice(0, dot);
  const exportPath = rest.slice(dot + 1);

  let mod;
  try {
    mod = await loadModule(path.resolve(taskRoot, dir, moduleName), dir + moduleName, taskRoot);
  } catch (err) {
    // Syntax errors, missing modules (the handler's or one it requires) and
    // exceptions thrown at module top level all mean "cannot import".
    throw new InitError('Runtime.ImportModuleError', `Unable to import module '${dir + moduleName}': ${err.name}: ${err.message}`, err);
  }

  const lookup = (root) => exportPath.split('.').reduce((obj, key) => (obj == null ? undefined : obj[key]), root);
  let handler = lookup(mod);
  // An ES module or a CommonJS one loaded through import() may keep it on `default`.
  if (handler === undefined && mod && mod.default) handler = lookup(mod.default);
  const name = `${dir + moduleName}.${exportPath}`;
  if (handler === undefined) throw new InitError('Runtime.HandlerNotFound', `${name} is undefined or not exported`);
  if (typeof handler !== 'function') throw new InitError('Runtime.HandlerNotFound', `${name} is not a function`);
  return handler;
}

// Tries file.js, file.mjs, file.cjs in AWS's order.
async function loadModule(base, request, taskRoot) {
  for (const ext of ['.js', '.mjs', '.cjs']) {
    const file = base + ext;
    if (!fs.existsSync(file)) continue;
    // An ES module is require()d where Node can (20.19+, 22.12+): import() first
    // starts the asynchronous ESM loader, ~5 ms of every such cold start.
    if (ext === '.mjs' && !process.features.require_module) return importFile(file);
    try {
      return require(file);
    } catch (err) {
      // An ES module with top-level await (or any, on a Node without require(esm))
      // cannot be require()d.
      if (err.code === 'ERR_REQUIRE_ESM' || err.code === 'ERR_REQUIRE_ASYNC_MODULE') return importFile(file);
      throw err;
    }
  }
  // Not a file in the task root: maybe a package in node_modules.
  return require(require.resolve(request, { paths: [taskRoot] }));
}

function importFile(file) {
  // Loaded lazily: the ESM loader is not needed by CommonJS handlers.
  return import(require('url').pathToFileURL(file).href);
}

// --- Invocation ---------------------------------------------------------------

function parseJsonHeader(value) {
  if (!value) return undefined;
  try {
    return JSON.parse(value);
  } catch (_) {
    return undefined;
  }
}

function makeContext(headers, settle) {
  const deadline = Number(headers['lambda-runtime-deadline-ms']) || 0;
  return {
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers['lambda-runtime-aws-request-id'],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: parseJsonHeader(headers['lambda-runtime-cognito-identity']),
    clientContext: parseJsonHeader(headers['lambda-runtime-client-context']),
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(deadline - Date.now(), 0),
    // The legacy completion methods; unlike the callback they never wait.
    done: (err, result) => settle(err == null ? { result } : { error: err }),
    succeed: (result) => settle({ result }),
    fail: (err) => settle({ error: err == null ? 'handled' : err }),
  };
}

// Runs the handler and resolves to { result } or { error }, whichever way it
// reports: a returned promise, the callback, or the legacy context methods.
function invoke(handler, event, headers) {
  return new Promise((resolve) => {
    let settled = false;
    let pending = null; // a callback result waiting for the event loop to drain

    const settle = (outcome) => {
      if (settled) return;
      settled = true;
      process.removeListener('beforeExit', onDrain);
      resolve(outcome);
    };
    // 'beforeExit' fires when nothing is left on the event loop (the idle
    // keep-alive socket is unref'd, so it does not count). Deliver the result a
    // callback left waiting; if the handler never reported one, AWS returns null.
    const onDrain = () => settle(pending || { result: null });
    process.on('beforeExit', onDrain);

    const callback = (err, result) => {
      const outcome = err == null ? { result } : { error: err };
      // Like AWS: by default a callback's result is sent only once the timers,
      // sockets, etc. the handler started have finished.
      if (context.callbackWaitsForEmptyEventLoop) pending = pending || outcome;
      else settle(outcome);
    };
    const context = makeContext(headers, settle);

    let returned;
    try {
      returned = handler(event, context, callback);
    } catch (err) {
      settle({ error: err });
      return;
    }
    if (returned && typeof returned.then === 'function') {
      returned.then((result) => settle({ result }), (err) => settle({ error: err }));
    } else if (returned !== undefined && handler.length < 3) {
      // A synchronous handler that takes no callback: use its return value.
      // (AWS ignores it and answers null; returning it is friendlier.)
      settle({ result: returned });
    }
  });
}

// --- Main loop ----------------------------------------------------------------

let currentRequestId = null;
let dying = false;

// An exception escaping the handler's own call stack (a timer, an event
// emitter, an unawaited promise) leaves the process in an unknown state: report
// it against the running invocation, then exit so the invoker starts afresh.
function fatal(err, errorType) {
  if (dying) return;
  dying = true;
  const error = toErrorBody(err, errorType);
  logError(error);
  const exit = () => process.exit(1);
  if (currentRequestId === null) exit();
  else postError(`${RUNTIME}/invocation/${currentRequestId}/error`, error).then(exit, exit);
}
process.on('uncaughtException', (err) => fatal(err));
process.on('unhandledRejection', (reason) => fatal(reason, 'Runtime.UnhandledPromiseRejection'));

async function handleOne(handler, next) {
  const headers = next.headers;
  const requestId = headers['lambda-runtime-aws-request-id'];
  if (!requestId) throw new Error('invocation/next without Lambda-Runtime-Aws-Request-Id');
  const base = `${RUNTIME}/invocation/${requestId}`;

  const traceId = headers['lambda-runtime-trace-id'];
  if (traceId) env._X_AMZN_TRACE_ID = traceId;
  else delete env._X_AMZN_TRACE_ID;

  let event;
  try {
    event = JSON.parse(next.body.toString('utf8'));
  } catch (err) {
    await postError(`${base}/error`, toErrorBody(err, 'Runtime.UnmarshalError'));
    return;
  }

  currentRequestId = requestId;
  const outcome = await invoke(handler, event, headers);
  if (dying) return new Promise(() => {}); // fatal() owns this invocation now
  currentRequestId = null;

  if ('error' in outcome) {
    const error = toErrorBody(outcome.error);
    logError(error);
    await postError(`${base}/error`, error);
    return;
  }
  let payload;
  try {
    // undefined (and functions, symbols) stringify to undefined: send null.
    payload = JSON.stringify(outcome.result);
    if (payload === undefined) payload = 'null';
  } catch (err) {
    // BigInt, circular structures, a throwing toJSON.
    const error = { errorType: 'Runtime.MarshalError', errorMessage: `Unable to stringify response body: ${err.message}`, stackTrace: [] };
    logError(error);
    await postError(`${base}/error`, error);
    return;
  }
  await post(`${base}/response`, payload);
}

async function main() {
  let handler;
  try {
    handler = await loadHandler(env.LAMBDA_TASK_ROOT || process.cwd(), env._HANDLER || '');
  } catch (err) {
    const error = err instanceof InitError
      ? { errorType: err.errorType, errorMessage: err.message, stackTrace: err.trace }
      : toErrorBody(err);
    logError(error);
    try {
      await postError(`${RUNTIME}/init/error`, error);
    } catch (postErr) {
      console.error(`bootstrap: could not report the init error: ${postErr.message}`);
    }
    process.exit(1);
  }

  for (;;) {
    const next = await request('GET', `${RUNTIME}/invocation/next`);
    if (next.status !== 200) {
      throw new Error(`invocation/next -> ${next.status}: ${next.body.toString().slice(0, 200)}`);
    }
    await handleOne(handler, next);
  }
}

main().catch((err) => {
  console.error(`bootstrap: Runtime API failed: ${err.stack || err}`);
  process.exit(1);
});
