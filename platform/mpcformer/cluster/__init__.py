"""Ray plumbing for MPC: party groups (owner, client, dealer actors) and a pool of K groups with retries.

- :mod:`~mpcformer.cluster.config`: ``PartyGroupConfig``
- :mod:`~mpcformer.cluster.party_group`: ``PartyGroup`` (start / run / shutdown), ``PartyCall``
- :mod:`~mpcformer.cluster.scheduler`: ``GroupPool`` (K groups, rebuild and retry), ``PoolConfig``

What runs on the groups lives elsewhere: encrypted inference in :mod:`mpcformer.inference`, the
benchmark in :mod:`mpcformer.bench`. Submodules are imported on demand (this package imports nothing heavy).
"""
