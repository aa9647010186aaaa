// Type declarations for hub.js, the hub's browser client (served at /static/hub.js).
// Copy this file next to your code, or point a `declare module` at it.

/** One event of a followed channel. */
export interface HubEvent {
  /** The hub's event id (`<ms>-<seq>.<h>`), or a Mercure publisher's chosen id. */
  id: string;
  /** The SSE event type: "message" for events published without one. */
  type: string;
  /** The event's data, as published (JSON stays text: `JSON.parse(event.data)`). */
  data: string;
}

/** Where the stream stands. */
export type HubState = "connecting" | "open" | "reconnecting" | "closed";

export interface HubStateInfo {
  /** This tab holds the stream its group of tabs shares. */
  leader?: boolean;
  /** The stream (re)opened from a cursor: the hub replayed what was missed. */
  resumed?: boolean;
  /** What went wrong, for "reconnecting" and "closed". */
  error?: string;
}

/** A `hub.reset` signal's payload (Mercure's "earliest" answer gives the same). */
export interface HubResetInfo {
  /** "expired" (history trimmed), "unknown" (an id the hub never had), ... */
  reason: string;
  message?: string;
  channels?: string[];
}

export interface Handlers {
  /** Every event of the channels, once, in order. */
  onEvent?(event: HubEvent): void;
  /**
   * The hub could not resume from the cursor: events may have been missed. Reload
   * the state these channels feed; the stream goes on live.
   */
  onReset?(reason: string, channels: string[], info: HubResetInfo): void;
  /** The stream's state changed (on every tab of the group, not just the holder's). */
  onState?(state: HubState, info: HubStateInfo): void;
}

export interface Options {
  /** The hub's base URL; by default the one hub.js was loaded from. */
  hub?: string | URL;
  /** "native" (`/events?channel=`) or "mercure" (`/.well-known/mercure?topic=`). */
  door?: "native" | "mercure";
  /**
   * A JWT for the stream, sent as `Authorization: Bearer`. Called before each
   * connection, before the token's `exp` (a fifth of its lifetime, at most 30 s,
   * early) and after a 401. Return null for no token (a cookie, or anonymous).
   */
  getToken?: () => string | null | Promise<string | null>;
  /** Start from this id instead of the cursor saved in sessionStorage. */
  lastEventId?: string;
  /** false: a stream of this tab's own, not shared with other tabs. Default true. */
  share?: boolean;
  /** fetch()'s credentials; "include" sends cookies to a hub on another origin. */
  credentials?: RequestCredentials;
  /**
   * Leave a stream that sent nothing (not even a heartbeat) for this many ms, and open
   * another from the cursor. Default 45000: three of the hub's 15 s heartbeats.
   */
  stallMs?: number;
}

export interface Subscription {
  /** The channels followed now, sorted. */
  readonly channels: string[];
  /** The id of the last event seen (saved per set of channels in sessionStorage). */
  readonly lastEventId: string | null;
  readonly state: HubState;
  /** This tab holds the shared stream. */
  readonly leader: boolean;
  /** Follow other channels (from that set's own saved cursor, if any). */
  setChannels(channels: string[]): void;
  /** Stop following; the stream closes once no tab follows these channels. */
  close(): void;
}

/** Follow channels; every tab of the origin that follows the same set shares one stream. */
export function subscribe(channels: string[], handlers?: Handlers, options?: Options): Subscription;

/** The claims of a JWT, unverified (for its `exp`); {} when it is not one. */
export function decodeToken(token: string): Record<string, unknown>;

/**
 * Read a text/event-stream response body, one onEvent call per event (null data: a
 * cursor only), onRetry per retry: field, onRead per chunk read (heartbeats included).
 */
export function readEvents(
  response: Response,
  onEvent: (event: { id: string | null; type: string; data: string | null }) => void,
  onRetry?: (ms: number) => void,
  onRead?: () => void,
): Promise<void>;
