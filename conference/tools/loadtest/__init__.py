"""``conference loadtest``: simulated district briefings against a running server.

Modules, from the wire up:

* :mod:`.streamstats`: what one viewer received on one stream (loss, frames,
  freezes, keyframe waits), from RTP headers only;
* :mod:`.media`: pre-encoded camera and speech tracks that a simulated point
  sends without encoding (the three aiortc internals they need, keyframe
  requests, audio levels and no receive-side REMB, are the client-side hooks
  of :mod:`conference.sfu.bridge`);
* :mod:`.sim`: the chair, points and WHEP viewers, subscribing as the browser
  page does; :mod:`.plan`: configuration, tokens, the floor schedule;
* :mod:`.worker`: a share of the participants in one process, on the event
  loop of :mod:`.eventloop` (batched UDP reads, large receive buffers);
  :mod:`.runner`: the coordinator (phases, /proc sampling via
  :mod:`.procstat`, progress bar); :mod:`.report`: the JSON report and table;
* :mod:`.weak`: ``--weak SHARE%:PROFILE``, points on emulated weak links
  (a rate-limited network namespace each, loss/delay relays, per-link report);
* :mod:`.command`: the command-line options.

Only :mod:`.command`, :mod:`.plan` and :mod:`.weak` (standard library only) are
imported by ``conference`` itself; the rest loads when a test runs.
"""
