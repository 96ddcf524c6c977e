"""The web pages: watches, trials and their feeds; subscribing, confirming, managing and unsubscribing.

An edge beside the CLI: it calls the same services (`watcher.accounts`, the store, the outbox),
and nothing in the core imports it.
"""
