"""High-throughput virtual screening (HTVS).

* :mod:`.features`, :mod:`.models`, :mod:`.train`, :mod:`.uncertainty`: property
  models with uncertainty (Magpie MLP and CGCNN deep ensembles).
* :mod:`.substitution`: candidate generation by data-mined ionic substitution.
* :mod:`.funnel`, :mod:`.stages`: the resumable screening funnel and its stages.
* :mod:`.acquisition`, :mod:`.active`: acquisition functions and the active-learning loop.
* :mod:`.sharding`: sharded batched inference, single- and multi-host.
* :mod:`.castelli`: the Castelli perovskite screen replayed as a known-answer benchmark.
"""
