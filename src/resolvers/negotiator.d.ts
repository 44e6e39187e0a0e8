// Types of `negotiator` 1.x (the content negotiation @apollo/server uses), which ships none.
declare module 'negotiator' {
  class Negotiator {
    constructor(request: { headers: Record<string, string | string[] | undefined> });
    /** The most preferred of `available` by the request's `Accept`, or undefined when it accepts none. */
    mediaType(available?: readonly string[]): string | undefined;
  }
  export = Negotiator;
}
