"""Nodes: several server processes serving one meeting, coordinated through Redis.

A *node* is one `conference serve` process.  With ``redis_url`` set, every node
registers itself in Redis (a key refreshed every second that lapses within
`NODE_TTL` seconds of its death) and keeps a directory of the publications its
participants send, per meeting; other nodes read it and follow it by Redis
pub/sub.  A node with participants in a meeting shows them every other node's
publications of that meeting as remote publications (`Room.add_remote`), fed
by relay streams (`conference.sfu.relay`), which flow only while someone on
the node receives them.  Without ``redis_url`` nothing here runs: the server is
one node, exactly as before.

Redis keys (``conference:`` prefix):

* ``node:{name}``: ``{"run", "relay": [host, port]}``, expires after `NODE_TTL` s;
* ``meeting:{id}:publications``: a hash, publication id -> its description (node,
  run, relay address, stream, participant, source, kind, codec, clock rate, layers);
* channel ``meeting:{id}``: ``{"op": "added" | "removed", "publication": {...}}``.

``run`` is random per process start: an entry left by an earlier run of a node
with the same name (killed, then restarted) is recognised as stale and ignored.
"""

from .node import NODE_TTL, Cluster

__all__ = ["NODE_TTL", "Cluster"]
