"""A streamed `chat.completion.chunk` as the dict the SDK's model would dump, without the model.

The openai SDK turns every chunk of a stream into a `ChatCompletionChunk` (a tree of pydantic
models built field by field), and the caller then dumped it back to a dict
(`model_dump(exclude_unset=True, exclude_none=True)`): per chunk that was most of the LLM
route's CPU (a 20-chunk call cost more than a whole chat turn). The stream is now read as the
plain dicts the SDK decodes (`cast_to=object`), and `dump_chunk` gives each the same result
the model's dump gave: `None` dropped wherever the model has a field or keeps an extra (every
level of the model tree), nested dicts that are not models (vendor extensions) kept as they
came, an integer in a `float` field made a float. The plan of which keys are models is read
from the SDK's own `ChatCompletionChunk` at import, so it follows the SDK's version. A chunk
that carries a field typed as a union of models (`moderation`) goes through the model as
before (`tests/providers/builtin_agent/test_openai_chunks.py` compares the two).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel

# A plan: field name -> how its value is dumped. A dict: a nested model's plan; a list of one
# plan: a list of such models; `float`: coerced like the model's float field; `_RAW`: as it
# came; `_MODEL`: a union of models (only the model itself knows which variant applies).
_RAW = "raw"
_MODEL = "model"
Plan = dict[str, Any]


def _type_plan(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_plan(args[0])
    if origin is typing.Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _type_plan(rest[0])
        return _MODEL if any(_type_plan(a) != _RAW for a in rest) else _RAW
    if origin is list:
        item = _type_plan(args[0])
        if item == _MODEL:
            return _MODEL
        return _RAW if item == _RAW else [item]
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return model_plan(tp)
    if tp is float:
        return float
    return _RAW


def model_plan(model: type[BaseModel]) -> Plan:
    return {name: _type_plan(field.annotation) for name, field in model.model_fields.items()}


class _NeedsModel(Exception):
    pass


def _dump(data: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        how = plan.get(key, _RAW)
        if how is _RAW:
            out[key] = value
        elif how is float:
            out[key] = float(value) if type(value) is int else value
        elif isinstance(how, dict):
            out[key] = _dump(value, how) if isinstance(value, dict) else value
        elif isinstance(how, list):
            out[key] = (
                [_dump(v, how[0]) if isinstance(v, dict) else _item(v, how[0]) for v in value]
                if isinstance(value, list)
                else value
            )
        else:
            raise _NeedsModel(key)
    return out


def _item(value: Any, how: Any) -> Any:
    return float(value) if how is float and type(value) is int else value


_CHUNK_PLAN = model_plan(ChatCompletionChunk)


def dump_chunk(data: dict[str, Any]) -> dict[str, Any]:
    """`ChatCompletionChunk` built from `data`, dumped without unset or None fields."""
    try:
        return _dump(data, _CHUNK_PLAN)
    except _NeedsModel:
        model = construct_type(type_=ChatCompletionChunk, value=data)
        dumped: dict[str, Any] = typing.cast(BaseModel, model).model_dump(
            exclude_unset=True, exclude_none=True
        )
        return dumped
