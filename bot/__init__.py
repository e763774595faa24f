"""rollback-bot domain: policy, SLO evaluation, incidents, verification, freeze, store, rendering, CLI."""
