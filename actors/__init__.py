"""Ray actors that act as MPC parties and the dealer. They hold no ML logic."""
