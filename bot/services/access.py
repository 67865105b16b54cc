"""Who may do what: the private allow-list, shop bans and admins."""

from __future__ import annotations

from enum import StrEnum

from bot.settings import Settings
from storage.models import Profile


class Verdict(StrEnum):
    ALLOWED = "allowed"
    NOT_LISTED = "not_listed"  # private mode, not an admin nor allowed
    BANNED = "banned"


class Access:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admins = frozenset(settings.admin_ids)
        self._allowed = self._admins | frozenset(settings.allowed_user_ids)

    @property
    def admin_ids(self) -> frozenset[int]:
        return self._admins

    def is_admin(self, user_id: int) -> bool:
        return user_id in self._admins

    def is_listed(self, user_id: int) -> bool:
        """In ADMIN_IDS or ALLOWED_USER_IDS (who may use the bot in private mode)."""
        return user_id in self._allowed

    def verdict(self, user_id: int, user: Profile | None) -> Verdict:
        """Admins always pass; in private mode only the listed; a ban refuses anyone else."""
        if self.is_admin(user_id):
            return Verdict.ALLOWED
        if not self._settings.is_shop and user_id not in self._allowed:
            return Verdict.NOT_LISTED
        if user is not None and user.banned:
            return Verdict.BANNED
        return Verdict.ALLOWED
