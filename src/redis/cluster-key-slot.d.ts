// Types of `cluster-key-slot` 1.1.1, the version ioredis pins (and routes with); that version ships none.
declare module 'cluster-key-slot' {
  /** Redis Cluster hash slot (0..16383) of a key, honouring `{hash tags}`. */
  function calculateSlot(key: string | Buffer): number;
  namespace calculateSlot {
    /** The common slot of `keys`, or -1 when they span more than one. */
    function generateMulti(keys: readonly (string | Buffer)[]): number;
  }
  export = calculateSlot;
}
