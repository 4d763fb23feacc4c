//! SQL `WHERE` semantics on top of evalexpr: `==`/`!=` rewritten into
//! functions that fail on NULL and compare integers with floats by value,
//! and `&&`, `||`, `!` evaluated here with three-valued logic (a failed
//! operand is SQL's unknown and decides only when the other does not).

use evalexpr::{Context, EvalexprError, EvalexprResult, Node, Operator, Value};

/// The internal functions `==` and `!=` become.
pub(super) const EQ: &str = "__walhook_eq";
pub(super) const NEQ: &str = "__walhook_neq";

/// A `Tuple` node, to wrap the operands of a rewritten comparison (evalexpr
/// builds nodes only by parsing).
pub(super) fn tuple_template() -> Option<Node> {
    let tree = evalexpr::build_operator_tree("(0, 0)").ok()?;
    let found = tree
        .iter()
        .find(|n| *n.operator() == Operator::Tuple)
        .cloned();
    found
}

/// `a == b` → `__walhook_eq((a, b))`, `a != b` → `__walhook_neq((a, b))`.
pub(super) fn rewrite_equality(node: &mut Node, tuple: &Node) {
    for child in node.children_mut() {
        rewrite_equality(child, tuple);
    }
    let name = match node.operator() {
        Operator::Eq => EQ,
        Operator::Neq => NEQ,
        _ => return,
    };
    let operands = std::mem::take(node.children_mut());
    let mut args = tuple.clone();
    *args.children_mut() = operands;
    *node.operator_mut() = Operator::FunctionIdentifier {
        identifier: name.to_string(),
    };
    *node.children_mut() = vec![args];
}

/// Evaluates with short-circuit three-valued `&&`, `||` and `!`: an error
/// operand is "unknown" and decides only when the other does not.
pub(super) fn eval3<C: Context>(node: &Node, context: &C) -> EvalexprResult<Value> {
    match (node.operator(), node.children()) {
        (Operator::RootNode, [only]) => eval3(only, context),
        (op @ (Operator::And | Operator::Or), [left, right]) => {
            let decisive = matches!(op, Operator::Or);
            let l = eval3(left, context).and_then(|v| v.as_boolean());
            if matches!(l, Ok(b) if b == decisive) {
                return Ok(Value::Boolean(decisive));
            }
            let r = eval3(right, context).and_then(|v| v.as_boolean());
            match (l, r) {
                (_, Ok(b)) if b == decisive => Ok(Value::Boolean(decisive)),
                (Ok(_), Ok(_)) => Ok(Value::Boolean(!decisive)),
                (Err(err), _) | (_, Err(err)) => Err(err),
            }
        }
        (Operator::Not, [only]) => Ok(Value::Boolean(!eval3(only, context)?.as_boolean()?)),
        _ => node.eval_with_context(context),
    }
}

/// The error of `==` and `!=` meeting a NULL.
const NULL_COMPARISON: &str = "a NULL in a comparison (== or !=) is unknown; use is_null(x)";

/// Whether `err` is SQL's unknown: a NULL met by a comparison, arithmetic
/// or a logical operator (an expected outcome for nullable columns), as
/// opposed to a real failure (text compared with a number, division by
/// zero, a value the server did not send).
pub(super) fn is_null_outcome(err: &EvalexprError) -> bool {
    use evalexpr::ValueType;
    match err {
        EvalexprError::CustomMessage(message) => message == NULL_COMPARISON,
        EvalexprError::ExpectedString { actual }
        | EvalexprError::ExpectedInt { actual }
        | EvalexprError::ExpectedFloat { actual }
        | EvalexprError::ExpectedNumber { actual }
        | EvalexprError::ExpectedNumberOrString { actual }
        | EvalexprError::ExpectedBoolean { actual }
        | EvalexprError::TypeError { actual, .. } => actual.is_empty(),
        EvalexprError::WrongTypeCombination { actual, .. } => actual.contains(&ValueType::Empty),
        EvalexprError::AdditionError {
            augend: a,
            addend: b,
        }
        | EvalexprError::SubtractionError {
            minuend: a,
            subtrahend: b,
        }
        | EvalexprError::MultiplicationError {
            multiplicand: a,
            multiplier: b,
        }
        | EvalexprError::DivisionError {
            dividend: a,
            divisor: b,
        }
        | EvalexprError::ModulationError {
            dividend: a,
            divisor: b,
        } => a.is_empty() || b.is_empty(),
        EvalexprError::NegationError { argument } => argument.is_empty(),
        _ => false,
    }
}

/// SQL-like equality: NULL fails (unknown), integers equal floats by value.
pub(super) fn sql_eq(argument: &Value) -> EvalexprResult<bool> {
    let Value::Tuple(pair) = argument else {
        return Err(EvalexprError::CustomMessage(
            "comparison without operands".into(),
        ));
    };
    let [a, b] = pair.as_slice() else {
        return Err(EvalexprError::CustomMessage(
            "comparison without operands".into(),
        ));
    };
    match (a, b) {
        (Value::Empty, _) | (_, Value::Empty) => {
            Err(EvalexprError::CustomMessage(NULL_COMPARISON.into()))
        }
        (Value::Int(i), Value::Float(f)) | (Value::Float(f), Value::Int(i)) => Ok(*i as f64 == *f),
        _ => Ok(a == b),
    }
}
