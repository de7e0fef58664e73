"""The core layer: what one evaluation means, independent of processes and files.

Types of the data that flows (samples, role requests, hypotheses), the role and dataset
protocols, masks and their IoU under LISA's ignore policy, the RESCue search of one sample,
the selection strategies of the verifier, and the metrics with their exact integer states.
Imports numpy, torch, torchmetrics and pycocotools only; no other layer of this package.
"""
