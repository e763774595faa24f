"""Who did something, as the store's audit rows and timeline name it when it was not a person."""

AUTO_ACTOR = "rollback-bot"  # the bot itself: an automatic run's `approved_by`, the freeze it sets, a promotion
