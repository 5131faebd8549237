"""Zero-shot evaluation as in the SAM paper (§7): clicks, edges, proposals, instances from boxes.

Modules: :mod:`~segany.evaluate.clicks` (click protocol and metrics), :mod:`~segany.evaluate.edges` (SAM edge maps
and the BSDS benchmark), :mod:`~segany.evaluate.proposals` (mask AR), :mod:`~segany.evaluate.instances` (mask AP
from boxes), :mod:`~segany.evaluate.baselines` (GrabCut, Canny), :mod:`~segany.evaluate.report` (tables, JSON,
plots) and :mod:`~segany.evaluate.runs` (the four experiments end to end, used by ``segany eval``).
"""
