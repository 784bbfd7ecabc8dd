"""Studies at scale: ``physical-adv sweep`` — a plan of many attacks (:mod:`.plan`), batched on one
device (:mod:`.batched`), run into a resumable study folder by local workers (:mod:`.study`) or Ray
(:mod:`.cluster`)."""
