"""The Responses and Conversations APIs: agents built on stored, chained responses."""
