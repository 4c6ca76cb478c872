"""What applying a config did (created, updated, unchanged, warnings), and its refusals of database rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from llm_platform.config_fields import ConfigError


@dataclass
class ConfigReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict)  # "tenant/key name" -> plaintext, shown once
    declared: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False)

    def declare(self, identity: tuple[str, ...], where: str, what: str) -> None:
        """Refuse a second entry for one row: the later would overwrite the earlier, and a reload flip them."""
        first = self.declared.setdefault(identity, where)
        if first != where:
            raise ConfigError(f"{where}: {what} is declared already at {first}; declare it once")


def validation_error(where: str, exc: ValidationError) -> ConfigError:
    """A model's refusal (its full_clean in a service) at the entry of the file that made the row."""
    return ConfigError(f"{where}: {'; '.join(f'{k}: {v}' for k, v in exc.message_dict.items())}")
