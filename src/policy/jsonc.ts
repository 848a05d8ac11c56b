import { AgentVpnError } from '../errors.js';

/**
 * JSON with comments (`// line` and `/* block *\/`), read by a small recursive-descent parser so
 * every error names line:column. Hostile text is the expected case (a policy comes from the
 * registry): the text size and nesting depth are capped before any work, duplicate keys are
 * refused (two readers must never see two meanings), and objects have no prototype, so a key
 * "__proto__" is just a key.
 */

/** A policy is read by every agent on every push; 256 Ki characters hold thousands of grants. */
export const MAX_JSONC_CHARS = 256 * 1024;
/** Policies are shallow (policy, grant, app value); deeper text is an attack on the stack. */
export const MAX_JSONC_DEPTH = 32;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A parsed document: the value, and where each value started (JSON path such as "grants/0/src/1"). */
export interface JsoncDocument {
  value: JsonValue;
  /** Offset into the text where the value at `path` starts. */
  offsets: Map<string, number>;
  text: string;
}

/** "line 3, column 7" (1-based) for an offset; O(text) once per error, never per value. */
export function lineCol(text: string, offset: number): { line: number; col: number } {
  let line = 1;
  let lineStart = 0;
  const end = Math.min(offset, text.length);
  for (let i = text.indexOf('\n'); i >= 0 && i < end; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, col: end - lineStart + 1 };
}

/** Line numbers for many offsets: newline offsets found once, then a binary search each. */
export function lineIndex(text: string): (offset: number) => number {
  const starts: number[] = [];
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) starts.push(i);
  return (offset) => {
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  };
}

export function jsoncError(code: string, text: string, offset: number, what: string, hint: string): AgentVpnError {
  const { line, col } = lineCol(text, offset);
  return new AgentVpnError(code, `${line}:${col}: ${what}`, hint);
}

const SYNTAX_HINT = 'write the policy as JSON (// and /* */ comments allowed), e.g. {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:443"]}]}';

export function parseJsonc(text: string): JsoncDocument {
  if (typeof text !== 'string') throw new AgentVpnError('POLICY_INVALID', 'policy is not text', SYNTAX_HINT);
  if (text.length > MAX_JSONC_CHARS) {
    throw new AgentVpnError('POLICY_INVALID', `policy is ${text.length} characters, more than ${MAX_JSONC_CHARS}`, 'split it into fewer, broader grants (selectors and port ranges)');
  }
  const offsets = new Map<string, number>();
  let i = 0;
  const fail = (what: string, at = i): never => {
    throw jsoncError('POLICY_INVALID', text, at, what, SYNTAX_HINT);
  };

  const skipSpace = (): void => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 9 || c === 10 || c === 13) i++;
      else if (c === 47 && text.charCodeAt(i + 1) === 47) {
        const nl = text.indexOf('\n', i);
        i = nl < 0 ? text.length : nl + 1;
      } else if (c === 47 && text.charCodeAt(i + 1) === 42) {
        const close = text.indexOf('*/', i + 2);
        if (close < 0) fail('comment /* is never closed');
        i = close + 2;
      } else return;
    }
  };

  const readString = (): string => {
    const start = i;
    i++; // opening quote
    let out = '';
    let run = i;
    for (;;) {
      if (i >= text.length) fail('string is never closed', start);
      const c = text.charCodeAt(i);
      if (c === 34) {
        out += text.slice(run, i);
        i++;
        return out;
      }
      if (c < 32) fail('control character inside a string (write it as an escape such as \\n)');
      if (c !== 92) {
        i++;
        continue;
      }
      out += text.slice(run, i);
      const e = text[i + 1];
      const simple: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
      if (e !== undefined && e in simple) {
        out += simple[e];
        i += 2;
      } else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
        out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
        i += 6;
      } else fail('invalid escape in a string');
      run = i;
    }
  };

  const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const readValue = (path: string, depth: number): JsonValue => {
    skipSpace();
    if (depth > MAX_JSONC_DEPTH) fail(`nested more than ${MAX_JSONC_DEPTH} levels deep`);
    offsets.set(path, i);
    const c = text[i];
    if (c === '{') {
      i++;
      const obj = Object.create(null) as { [key: string]: JsonValue };
      skipSpace();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        skipSpace();
        if (text[i] !== '"') fail('expected a key in double quotes');
        const keyAt = i;
        const key = readString();
        if (Object.prototype.hasOwnProperty.call(obj, key)) fail(`key "${key.slice(0, 40)}" appears twice`, keyAt);
        skipSpace();
        if (text[i] !== ':') fail('expected ":" after the key');
        i++;
        obj[key] = readValue(`${path}/${key}`, depth + 1);
        skipSpace();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: JsonValue[] = [];
      skipSpace();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(readValue(`${path}/${arr.length}`, depth + 1));
        skipSpace();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return readString();
    if (text.startsWith('true', i)) return (i += 4), true;
    if (text.startsWith('false', i)) return (i += 5), false;
    if (text.startsWith('null', i)) return (i += 4), null;
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m) {
      i += m[0].length;
      return Number(m[0]);
    }
    return fail(i >= text.length ? 'unexpected end of the policy' : `unexpected character ${JSON.stringify(text[i])}`);
  };

  const value = readValue('', 0);
  skipSpace();
  if (i < text.length) fail('text after the end of the policy');
  return { value, offsets, text };
}
