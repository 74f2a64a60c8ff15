"""The six AutoCoder agents and how a task picks them."""
