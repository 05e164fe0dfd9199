"""Peers: daemons on other nodes that hold (or are pulling) the same model version.

Issue 16. The pieces, each its own module:

* :mod:`.directory`: who the other daemons are. A :class:`~.directory.PeerDirectory`
  answers the current candidate set without blocking; :class:`~.directory.StaticPeers`
  is a fixed list (tests, bare metal), the Kubernetes one watches the chart's headless
  Service's EndpointSlices. A candidate is used as a peer only while it answers.
* :mod:`.swarm`: the swarm rule. When several daemons pull one version at once, each
  range has one owner among them (rendezvous hashing), who reads it from the origin; the
  others read it from the owner, and fall back to the origin on any failure.
"""
