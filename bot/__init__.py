"""SMS-Man Telegram bot."""
