"""Every message and edit the bot sends on its own.

- api.py: `Tell` and `Priority`, what services hand delivery (no rendering: services
  import only this module, never bot/ui);
- pacing.py: the overall and per-chat budgets (aiolimiter), 429 pauses, the session
  middleware that makes handlers' answers count too;
- render.py: texts and keyboards through bot/ui, in the reader's language;
- service.py: `Delivery`, the durable queue and its sender.
"""
