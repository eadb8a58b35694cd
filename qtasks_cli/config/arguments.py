"""A job's ``args`` and ``kwargs``: ``${NAME}`` placeholders filled from the environment, and
the values checked up front as every start path checks them."""

from __future__ import annotations

from typing import Any

from qtasks_cli import yamlload, yamltraps
from qtasks_cli.config.jobstate import _JobState
from qtasks_cli.located import Located


class _ArgumentReader(_JobState):
    """Reads a job's ``args`` and ``kwargs`` into its values, with the secrets they name."""

    def _read_arguments(self) -> None:
        args, kwargs = self.nodes.get("args"), self.nodes.get("kwargs")
        for node in (args, kwargs):
            if node is not None:
                for where, note in yamltraps.notes(node):
                    self.ctx.warn(where, note)
        if args is not None and not args.is_null and not args.invalid:
            if args.kind == "seq":
                self.values["args"] = tuple(self._interpolate(item) for item in args.value)
                raw_args = tuple(yamlload.plain(args))
                if raw_args != self.values["args"]:  # placeholders: keep them as written
                    self.values["raw_args"] = raw_args
            else:
                self.arguments_ok = False
                self.report(args, f"expected a list of arguments, got {args.type_name()}")
        if kwargs is not None and not kwargs.is_null and not kwargs.invalid:
            if kwargs.kind == "map":
                self.values["kwargs"] = self._interpolate(kwargs)
                raw_kwargs = yamlload.plain(kwargs)
                if raw_kwargs != self.values["kwargs"]:
                    self.values["raw_kwargs"] = raw_kwargs
            else:
                self.arguments_ok = False
                self.report(
                    kwargs, f"expected a mapping of keyword arguments, got {kwargs.type_name()}"
                )
        # What every start path checks, checked up front (qtasks_cli.request).
        from qtasks_cli.argvalues import check_value

        for node, key, value in (
            (args, "args", list(self.values.get("args", ()))),
            (kwargs, "kwargs", self.values.get("kwargs", {})),
        ):
            if node is None or _has_invalid(node):
                continue  # reported where it is
            problem = check_value(value, key)
            if problem:
                self.arguments_ok = False
                self.report(node, f"arguments refused: {problem}")

    def _interpolate(self, node: Located) -> Any:
        """The plain value of ``node`` with ``${NAME}`` taken from the environment."""
        if node.kind == "map":
            for key, (key_node, _) in node.value.items():
                if "${" in key.replace("$${", ""):
                    self.arguments_ok = False
                    self.report(
                        key_node,
                        f"a mapping key is taken as written; {key!r:.40} would not be filled "
                        "from the environment (placeholders are read in values only)",
                    )
            return {key: self._interpolate(value) for key, (_, value) in node.value.items()}
        if node.kind == "seq":
            return [self._interpolate(item) for item in node.value]
        if not isinstance(node.value, str) or "${" not in node.value:
            return node.value
        from qtasks_cli.placeholders import PLACEHOLDER, expand, unsupported_placeholder

        problem = unsupported_placeholder(node.value)
        if problem:
            self.arguments_ok = False
            self.report(node, problem)
            return node.value

        for match in PLACEHOLDER.finditer(node.value):
            name = match.group(1)
            value = self.ctx.env.get(name) if name else None
            if value is not None:
                self.variables[name] = value
            if value:
                self.secrets.setdefault(value, match.group(0))
                self._warn_if_shown(node, match.group(0), value)
        text, missing = expand(node.value, self.ctx.env.get)
        if missing and self.ctx.variables_required:
            self.arguments_ok = False
            names = ", ".join(repr(name) for name in missing)
            what = f"variables {names} are" if len(missing) > 1 else f"variable {names} is"
            hint = f"give a default with ${{{missing[0]}:-value}}"
            self.report(node, f"environment {what} not set ({hint})")
        return text

    def _warn_if_shown(self, node: Located, placeholder: str, value: str) -> None:
        from qtasks_cli.redaction import MIN_SECRET_CHARS, is_secret

        if not is_secret(value):
            self.ctx.warn(
                node,
                f"the value of {placeholder} is shorter than {MIN_SECRET_CHARS} characters, "
                "so it is not hidden in what jobs print, raise or return (the stored "
                f"arguments keep {placeholder}); see the README's Security section",
            )


def _has_invalid(node: Located) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if item.invalid:
            return True
        if item.kind == "map":
            stack.extend(value for _, value in item.value.values())
        elif item.kind == "seq":
            stack.extend(item.value)
    return False
