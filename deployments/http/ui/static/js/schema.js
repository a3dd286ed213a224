// The API's own limits, read from its live OpenAPI document: the pydantic Field bounds (ge/le/gt),
// choices (Literal -> enum), defaults and descriptions of each request model's fields. The page's
// controls follow them, so a changed limit in deployments/schemas.py shows here without an edit.

/** The OpenAPI document (an open path: it needs no API key). */
export async function loadOpenApi() {
  const response = await fetch(new URL("openapi.json", document.baseURI), { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`openapi.json answered ${response.status}`);
  return response.json();
}

/**
 * One field of a component schema, flattened: {type, enum, min, max, exclusiveMin, exclusiveMax,
 * default, description, nullable}. `anyOf: [X, {type: "null"}]` (an Optional field) becomes X with
 * nullable = true. Bounds missing from the document are simply undefined.
 */
export function fieldSchema(openapi, model, name) {
  const property = openapi?.components?.schemas?.[model]?.properties?.[name];
  if (!property) return { nullable: true };
  const variants = property.anyOf || [property];
  const main = variants.find((v) => v.type !== "null") || {};
  return {
    type: main.type,
    enum: main.enum,
    min: main.minimum,
    max: main.maximum,
    exclusiveMin: main.exclusiveMinimum,
    exclusiveMax: main.exclusiveMaximum,
    default: property.default ?? main.default,
    description: property.description || main.description || "",
    nullable: variants.some((v) => v.type === "null"),
  };
}

/** Whether the API asks for a bearer key (the security scheme appears only when keys are on). */
export const needsKey = (openapi) => Boolean(openapi?.components?.securitySchemes?.bearer);
