"""What every kind's reconciler shares: one API client, one event recorder, and
per-object serialised reconciles with retries and a resync (``running``,
``reconciling``, ``events``).

A kind builds its reconciler from a ``running.Runtime`` and hands its handlers to
``registry``; nothing here knows a kind.
"""
