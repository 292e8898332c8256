"""Builds request messages from plain Python values: dicts for messages, short enum names."""

import operator
import re

from google.protobuf.descriptor import FieldDescriptor


def _enum_prefix(enum_descriptor):
    # HeadMode -> HEAD_MODE_, PredictMode -> PREDICT_MODE_, Split -> SPLIT_.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_descriptor.name).upper() + "_"


def enum_value(enum_descriptor, value):
    """An enum number from a number, a full name ("PREDICT_MODE_MEAN") or a short one ("mean")."""
    if isinstance(value, bool):
        raise TypeError(f"{enum_descriptor.name} expects a name or a number, got {value!r}")
    if isinstance(value, str):
        prefix = _enum_prefix(enum_descriptor)
        for name in (value, value.upper(), prefix + value.upper()):
            if name in enum_descriptor.values_by_name:
                return enum_descriptor.values_by_name[name].number
        choices = [v.name[len(prefix):].lower() for v in enum_descriptor.values
                   if v.name.startswith(prefix) and not v.name.endswith("_UNSPECIFIED")]
        raise ValueError(f"unknown {enum_descriptor.name} {value!r}: expected one of {choices}")
    try:
        number = operator.index(value)  # Python and numpy integers
    except TypeError:
        raise TypeError(f"{enum_descriptor.name} expects a name or a number, "
                        f"got {type(value).__name__}") from None
    if number not in enum_descriptor.values_by_number:
        raise ValueError(f"{number} is not a {enum_descriptor.name} value")
    return number


def make_message(cls, value=None, **fields):
    """A new `cls` from an instance of it, a dict of its fields, and/or keyword fields.

    Nested messages may be dicts and enum fields short names (head_mode="multi"). Unknown
    fields and values of the wrong type raise ValueError / TypeError naming the field.
    """
    message = cls()
    if value is not None:
        if isinstance(value, cls):
            message.CopyFrom(value)
        elif isinstance(value, dict):
            fields = {**value, **fields}
        else:
            raise TypeError(f"expected a {cls.DESCRIPTOR.name} or a dict, got {type(value).__name__}")
    descriptor = cls.DESCRIPTOR
    for key, item in fields.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            raise ValueError(f"{descriptor.name} has no field {key!r}; fields are "
                             f"{sorted(descriptor.fields_by_name)}")
        try:
            _set_field(message, field, item)
        except (TypeError, ValueError) as error:
            # A plain ValueError / TypeError: a subclass may need other constructor arguments.
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"{descriptor.name}.{key}: {error}") from error
    return message


def _set_field(message, field, value):
    if value is None:
        message.ClearField(field.name)
        return
    repeated = field.label == FieldDescriptor.LABEL_REPEATED
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        target = getattr(message, field.name)
        if repeated:
            del target[:]
            for item in value:
                element = target.add()
                element.CopyFrom(make_message(type(element), item))
        else:
            target.CopyFrom(make_message(type(target), value))
        return
    if field.type == FieldDescriptor.TYPE_ENUM:
        if repeated:
            value = [enum_value(field.enum_type, item) for item in value]
        else:
            value = enum_value(field.enum_type, value)
    elif repeated:
        value = [_plain(item) for item in value]
    else:
        value = _plain(value)
    if repeated:
        target = getattr(message, field.name)
        del target[:]
        target.extend(value)
    else:
        setattr(message, field.name, value)


def _plain(value):
    # numpy scalars -> Python numbers, which protobuf accepts.
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():
        return item()
    return value
