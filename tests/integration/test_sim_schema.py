"""JSON instances the simulator generates for schemas: valid ones validate, violations don't.

Pure functions (no server): pydantic-generated schemas, OpenAI strict schemas, hand-written
ones with constraints, formats and recursion.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shoal.sim.schema import instance, violation


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    street: str = Field(min_length=3, max_length=12)
    zip_code: str = Field(min_length=5, max_length=5)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    age: int = Field(ge=0, le=130)
    height_m: float = Field(gt=0.5, lt=2.5)
    score: float = Field(multiple_of=0.5, ge=0, le=10)
    even: int = Field(multiple_of=2, ge=10, le=20)
    favourite: Colour
    home: Address
    previous: list[Address] = Field(min_length=1, max_length=3)
    nickname: str | None = None
    tags: set[str] = Field(default_factory=set)
    pair: tuple[int, str]
    counts: dict[str, int]
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    born: dt.date
    seen: dt.datetime
    ident: uuid.UUID


class Tree(BaseModel):
    label: str
    children: list[Tree] = Field(default_factory=list)
    parent: Tree | None = None


MODELS: list[type[BaseModel]] = [Person, Tree, Address, Cat]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", range(5))
def test_instances_validate_against_pydantic_schemas(model: type[BaseModel], seed: int) -> None:
    value = instance(model.model_json_schema(), random.Random(seed))
    model.model_validate(value)


@pytest.mark.parametrize("model", MODELS)
def test_instances_validate_against_openai_strict_schemas(model: type[BaseModel]) -> None:
    schema = to_strict_json_schema(model)
    value = instance(schema, random.Random(0))
    model.model_validate(value)
    assert set(value) == set(schema["properties"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", range(3))
def test_violations_fail_validation(model: type[BaseModel], seed: int) -> None:
    value = violation(model.model_json_schema(), random.Random(seed))
    with pytest.raises(ValidationError):
        model.model_validate(value)


def test_additional_properties_false_with_nothing_required_gets_an_extra_key() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "additionalProperties": False}  # fmt: skip
    assert "unexpected_field" in violation(schema, random.Random(0))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 5},
        {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6},
        {"type": "number", "minimum": -3.5, "maximum": -3.0},
        {"type": "string", "minLength": 40},
        {"type": "string", "maxLength": 2},
        {"type": "string", "format": "email"},
        {"type": "array", "items": {"type": "integer"}, "minItems": 4, "uniqueItems": True},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False},
        {"enum": ["a", 1, None]},
        {"const": {"fixed": True}},
        {"type": ["null", "integer"]},
        {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 3}]},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                   {"properties": {"b": {"type": "string"}}, "required": ["b"]}]},
        {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
    ],
)  # fmt: skip
def test_constraints_are_honoured(schema: dict[str, Any]) -> None:
    rng = random.Random(1)
    value = instance(schema, rng)
    _check(schema, value)


def _check(schema: dict[str, Any], value: Any) -> None:
    """A small validator for the constraints exercised above (no jsonschema dependency)."""
    if "const" in schema:
        assert value == schema["const"]
    if "enum" in schema:
        assert value in schema["enum"]
    if "anyOf" in schema:
        assert value is None or (isinstance(value, str) and len(value) <= 3)
    if "allOf" in schema:
        assert isinstance(value["a"], int)
        assert isinstance(value["b"], str)
    kind = schema.get("type")
    if kind == "integer":
        assert isinstance(value, int)
        assert schema.get("minimum", -1e9) <= value <= schema.get("maximum", 1e9)
        assert schema.get("exclusiveMinimum", -1e9) < value < schema.get("exclusiveMaximum", 1e9)
    if kind == "number":
        assert schema["minimum"] <= value <= schema["maximum"]
    if kind == "string":
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1e9)
        if schema.get("format") == "email":
            assert "@" in value
    if kind == "array" and "items" in schema and schema["items"] is not False:
        assert len(value) >= schema["minItems"]
        assert len(set(value)) == len(value)
    if kind == "array" and "prefixItems" in schema:
        assert isinstance(value[0], str)
        assert isinstance(value[1], bool)
        assert len(value) == 2
    if kind == ["null", "integer"]:
        assert isinstance(value, int)
    if kind == "object" and "additionalProperties" in schema:
        assert len(value) >= 2
        assert all(isinstance(v, int) for v in value.values())


def test_generation_is_deterministic_under_the_rng_seed() -> None:
    schema = Person.model_json_schema()
    assert instance(schema, random.Random(9)) == instance(schema, random.Random(9))
    assert instance(schema, random.Random(9)) != instance(schema, random.Random(10))


def test_type_adapter_schemas_of_plain_types() -> None:
    for tp in (list[int], dict[str, list[float]], tuple[str, int, bool], Colour):
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
        adapter.validate_python(instance(adapter.json_schema(), random.Random(0)))
