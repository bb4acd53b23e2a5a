"""What requests may cost: one body, all bodies at once, a preview (docs/service.md, "Limits").

Plain numbers with their reasons, apart from the code that enforces them
(``webhook.service.body`` for bodies, ``webhook.service.preview_route`` for
previews), so that the budget's arithmetic can be read, and tested, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request, and all requests at once, may cost (docs/service.md, "Limits").

    The defaults keep the process under 400 MiB whatever clients send, for a
    Deployment whose memory limit is 512 MiB; tests shrink them to reach the
    edges quickly.
    """

    # kube-apiserver refuses request bodies over 3 MiB, and etcd stores objects
    # of at most ~1.5 MiB, so no pod can be bigger than 3 MiB. An
    # AdmissionReview may carry two copies (``object`` and, for UPDATE,
    # ``oldObject``) plus the envelope, JSON-escaped: 2 x 3 MiB + 1 MiB of
    # slack bounds every legitimate review.
    max_body_bytes: int = 7 * MiB
    # Bodies held at once, across all requests. Bytes are counted as they
    # arrive, not when a Content-Length announces them: a client that sends
    # headers and then nothing holds nothing. What does not fit is refused at
    # once (503) rather than buffered or queued.
    body_budget_bytes: int = 96 * MiB
    # Bodies over ``large_body_bytes`` (announced or received so far) may only
    # grow while all bodies together hold at most ``large_budget_bytes``. The
    # rest is a reserve that only small bodies reach, and it cannot be used
    # up: a connection carries one request at a time and the server has at
    # most ``webhook.service.server.MAX_OPEN_FILES`` (1,024) connections, so small
    # bodies hold at most 1,024 x 64 KiB = 64 MiB, and 32 MiB of large ones
    # + 64 MiB <= 96 MiB. A review of up to 64 KiB (every ordinary pod: a
    # few KiB) is therefore never refused for memory, whatever other clients
    # do; bigger ones share 32 MiB (four 7 MiB bodies at once), which a
    # client with 32 MiB to upload every read deadline can keep full.
    # tests/unit/test_service_limits.py holds these numbers to that inequality.
    large_body_bytes: int = 64 * KiB
    large_budget_bytes: int = 32 * MiB
    # (A review may hold ``webhook.service.admission.MAX_JSON_VALUES`` values.)
    # Values in a preview body (JSON or YAML; for YAML every scalar, list and
    # map counts, keys included). PyYAML builds an object per value and the
    # yaml/diff renderers cost about as much again, so a preview's time grows
    # with its values: this bound keeps the slowest preview well inside the
    # 15 s promise, even on a busy machine, where four times as many would not
    # (docs/service.md, "Limits", has the timings). 32768 values are a few
    # hundred KiB of manifests.
    max_preview_values: int = 32_768
    # Objects in a preview body. The input is bounded by the two caps above,
    # the output by this one: each injected pod gains a sidecar, shown twice
    # in the JSON view (patch and object), so a body of many minimal pods,
    # well under the value cap, made an answer of tens of megabytes and took
    # the process past its memory budget; at this bound the largest answer is
    # a few MiB (docs/service.md, "Limits", has the sizes).
    # Bulk injection is the CLI's job (``inject -f``), not the webhook's.
    max_preview_objects: int = 100
    # Reviews over this many bytes are decoded, injected and encoded in a
    # worker thread, so that the interpreter's switch interval hands the
    # event loop its turn every few milliseconds: the engine walks every
    # annotation and container in Python, and on the loop a review with tens
    # of thousands of annotations would hold up other admissions for the whole
    # walk. Smaller ones (every ordinary pod) stay on the loop, where a thread
    # hop would cost more than the work saves. (orjson's parse holds the
    # interpreter lock either way.) docs/service.md, "Limits", has the timings.
    thread_body_bytes: int = 64 * KiB
    # How many such reviews are worked on at once: one, as on the loop, so
    # that at most one big review is held parsed at a time.
    review_threads: int = 1
    # Previews run in a worker thread; one at a time bounds their memory and
    # CPU, and a preview waits at most this long for its turn before it is
    # answered 503, so that every preview is answered within 15 s.
    previews_at_once: int = 1
    preview_wait_seconds: float = 5.0
    # A preview reads the namespaces it names that are not cached, one after
    # another (each read up to 2 s, the source's fetch timeout). Once this
    # much time has gone into reads, the rest are taken from the cache or
    # treated as unlabelled with a warning: a hundred objects in a hundred
    # namespaces while the API server hangs would otherwise take minutes.
    # The 5 s wait, these 3 s (plus the read under way, up to 2 s) and the
    # slowest preview at the caps (docs/service.md, "Limits") stay within 15 s.
    preview_lookup_seconds: float = 3.0
