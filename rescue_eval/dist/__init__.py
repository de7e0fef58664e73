"""The distribution layer: how many processes there are and how they reach each other.

Launch (rank, world size, local and node rank from the cluster environment: torchrun, SLURM's
srun, or one plain process; the process group), placement (which ranks host which role),
serving (a role server: bounded queue + micro-batcher in front of one backend) and transports
(role calls between ranks: `tcp`, `rpc` or `gloo`, or `local` in one process) behind one protocol.
Imports the core layer only.
"""
