"""Multiruns: job dir names (`naming`), torch threads per parallel job (`threads`), the summary (`summary`)."""
